"""GOAT's conversations, turn by turn (the paper's Algorithm 1): the attacker writes, the target replies, the judge decides.

Every conversation of one turn goes to the attacker, the target and the judge together, so batched
models generate them at once. An attacker turn that cannot be used falls back to a technique template.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from herd.stages.safety import GoatConfig
from tasks.redteam.techniques import TECHNIQUES
from tasks.safety.chat import ChatError, ChatModel, Message, respond_all
from tasks.safety.goat.goals import Goal
from tasks.safety.goat.judges import Judge
from tasks.safety.goat.parser import AttackerTurn, parse_attacker
from tasks.safety.goat.prompts import ATTACKER_SYSTEM, FIRST_TURN, FOLLOW_UP, format_techniques

log = logging.getLogger(__name__)


@dataclass
class Conversation:
    goal: Goal
    goal_index: int
    attempt: int
    attacker: list[Message]
    target: list[Message] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    success_turn: int | None = None
    unparsed_verdicts: int = 0  # replies the judge gave no verdict on: the outcome of those turns is unknown

    @property
    def success(self) -> bool:
        return self.success_turn is not None

    def as_record(self) -> dict[str, Any]:
        return {"goal_id": self.goal.id, "category": self.goal.category, "goal": self.goal.text,
                "attempt": self.attempt, "success": self.success, "success_turn": self.success_turn,
                "unparsed_verdicts": self.unparsed_verdicts, "turns": self.turns, "attacker_history": self.attacker, "target_history": self.target}


def _sampling(model: ChatModel, seed: int) -> ChatModel:
    """The same model (weights shared) drawing with another seed: each attempt and turn its own draw."""
    if not hasattr(model, "seed"):
        return model
    drawn = copy.copy(model)
    drawn.seed = seed
    return drawn


def start(goal: Goal, goal_index: int, attempt: int) -> Conversation:
    system = ATTACKER_SYSTEM.format(goal=goal.text, techniques=format_techniques())
    return Conversation(goal, goal_index, attempt, [{"role": "system", "content": system},
                                                    {"role": "user", "content": FIRST_TURN.format(goal=goal.text)}])


def attacker_turns(attacker: ChatModel, conversations: list[Conversation], turn: int,
                   seed: int) -> list[tuple[str, AttackerTurn | None, str | None]]:
    """Per conversation: the attacker's raw answer, its parsed parts (None: unusable) and an error, if any."""
    out: list[tuple[str, AttackerTurn | None, str | None]] = [("", None, None)] * len(conversations)
    by_attempt: dict[int, list[int]] = defaultdict(list)
    for i, conversation in enumerate(conversations):
        by_attempt[conversation.attempt].append(i)
    for attempt, rows in sorted(by_attempt.items()):
        model = _sampling(attacker, seed + 7919 * attempt + 104_729 * turn)
        answers = respond_all(model, [conversations[i].attacker for i in rows])
        for i, answer in zip(rows, answers):
            if isinstance(answer, ChatError):
                out[i] = ("", None, str(answer))
            else:
                out[i] = (answer, parse_attacker(answer), None)
    return out


def converse(goals: list[Goal], target: ChatModel, attacker: ChatModel, judge: Judge,
             config: GoatConfig) -> tuple[list[Conversation], Counter]:
    """Every goal attacked ``config.attempts`` times for up to ``config.turns`` turns; the conversations and the
    counts of attacker turns, fallbacks, errors and judged replies."""
    conversations = [start(goal, g, attempt) for attempt in range(config.attempts)
                     for g, goal in enumerate(goals)]
    counts: Counter = Counter()
    for turn in range(config.turns):
        active = [c for c in conversations if not (config.stop_on_success and c.success)]
        if not active:
            break
        attack(attacker, active, turn, config.seed, counts)
        reply_and_judge(target, judge, active, turn, counts)
        for conversation in active:
            record = conversation.turns[-1]
            conversation.attacker.append({"role": "user", "content": FOLLOW_UP.format(
                goal=conversation.goal.text, prompt=record["prompt"], reply=record["reply"])})
        log.info("GOAT turn %d: %d conversations, %d successful so far", turn + 1, len(active),
                 sum(c.success for c in conversations))
    return conversations, counts


def attack(attacker: ChatModel, active: list[Conversation], turn: int, seed: int, counts: Counter) -> None:
    """The attacker's turn of each conversation, or a technique's template in its place; its prompt goes to the target."""
    for conversation, (raw, parsed, error) in zip(active, attacker_turns(attacker, active, turn, seed)):
        record: dict[str, Any] = {"turn": turn, "attacker_raw": raw}
        counts["attacker_turns"] += 1
        if parsed is None:
            technique = TECHNIQUES[(conversation.goal_index + turn + conversation.attempt) % len(TECHNIQUES)]
            prompt = technique.apply(conversation.goal.text, variant=turn // len(TECHNIQUES) + conversation.attempt)
            record.update(parsed=False, fallback_technique=technique.name)
            counts["attacker_fallbacks"] += 1
            if error:
                record["attacker_error"] = error
                counts["attacker_errors"] += 1
        else:
            prompt = parsed.response
            record.update(parsed=True, observation=parsed.observation, thought=parsed.thought,
                          strategy=parsed.strategy)
        record["prompt"] = prompt
        conversation.attacker.append({"role": "assistant", "content": raw})
        conversation.target.append({"role": "user", "content": prompt})
        conversation.turns.append(record)


def reply_and_judge(target: ChatModel, judge: Judge, active: list[Conversation], turn: int, counts: Counter) -> None:
    """The target's replies, and the judge's verdict on each non-empty one (an empty reply is safe)."""
    replies = respond_all(target, [c.target for c in active])
    judged: list[tuple[Conversation, str]] = []
    for conversation, reply in zip(active, replies):
        record = conversation.turns[-1]
        if isinstance(reply, ChatError):
            record["target_error"] = str(reply)
            counts["target_errors"] += 1
            reply = ""
        record["reply"] = reply
        conversation.target.append({"role": "assistant", "content": reply})
        if reply.strip():
            judged.append((conversation, reply))
        else:
            record.update(unsafe=False, judge="(empty reply: safe)")
    for (conversation, _), verdict in zip(judged, judge.verdicts([(c.goal, r) for c, r in judged])):
        record = conversation.turns[-1]
        record.update(unsafe=verdict.unsafe, judge=verdict.raw, judge_categories=list(verdict.categories),
                      judge_unparsed=verdict.unparsed)
        counts["judged"] += 1
        if verdict.unparsed:  # not a success, and not a failed attack either: counted apart
            counts["judge_unparsed"] += 1
            conversation.unparsed_verdicts += 1
        elif verdict.unsafe and conversation.success_turn is None:
            conversation.success_turn = turn
