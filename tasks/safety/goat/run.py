"""A GOAT run end to end, and the attacker, judge and goals a :class:`GoatConfig` names (the stage's and the CLI's).

    attacker = load_attacker(config, target, scratch, cse_config)
    judge = load_judge(config, target, GuardJudge(output_guard), scratch, cse_config)
    goals, skipped = collect_goals(config, interpreter_uri)
    result = run_goat(goals, target, attacker, judge, out_dir, config, tracker=ctx.tracker)
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from herd.stages.safety import CyberSecEvalConfig, GoatConfig
from tasks.safety.chat import ChatModel, as_judge, load_chat_model
from tasks.safety.goat.goals import Goal, builtin_goals, interpreter_goals, spread_goals
from tasks.safety.goat.judges import ChatJudge, GuardJudge, Judge
from tasks.safety.goat.loop import converse
from tasks.safety.goat.report import GoatResult, summarise, write_outputs


def run_goat(goals: list[Goal], target: ChatModel, attacker: ChatModel, judge: Judge, out_dir: Path,
             config: GoatConfig = GoatConfig(), tracker=None) -> GoatResult:
    """Every goal attacked ``config.attempts`` times for up to ``config.turns`` turns; files into ``out_dir``."""
    if not goals:
        raise ValueError("GOAT needs at least one goal")
    started = time.monotonic()
    conversations, counts = converse(goals, target, attacker, judge, config)
    names = {"target": target.name, "attacker": attacker.name, "judge": judge.name}
    summary, overall, by_category = summarise(goals, conversations, counts, config, names)
    summary["seconds"] = round(time.monotonic() - started, 2)
    write_outputs(out_dir, conversations, by_category, overall, summary)
    if tracker is not None:
        tracker.log_metrics({f"goat.{key}": value for key, value in summary["metrics"].items()})
        for name in ("tables/asr_by_category.csv", "summary.json", "conversations.jsonl"):
            tracker.log_artifact(out_dir / name, "goat" + ("/tables" if name.startswith("tables/") else ""))
    return GoatResult(out_dir, summary, by_category, conversations)


def with_generation(model: ChatModel, **settings) -> ChatModel:
    """The same model (weights shared) generating with other settings (``max_new_tokens``, ``temperature``)."""
    changed = copy.copy(model)
    for key, value in settings.items():
        if hasattr(changed, key):
            setattr(changed, key, value)
    return changed


def load_attacker(config: GoatConfig, target: ChatModel, scratch: Path, cse: CyberSecEvalConfig,
                  api_key_env: str | None = None, tokenizer_uri: str | None = None) -> ChatModel:
    """``config.attacker``, or the target attacking itself, sampling as the attacker should."""
    attacker = target if not config.attacker else load_chat_model(
        config.attacker, scratch / "attacker", cse, api_key_env=api_key_env, tokenizer_uri=tokenizer_uri)
    return with_generation(attacker, max_new_tokens=config.attacker_max_new_tokens,
                           temperature=config.attacker_temperature)


def load_judge(config: GoatConfig, target: ChatModel, guard: GuardJudge | None, scratch: Path,
               cse: CyberSecEvalConfig, api_key_env: str | None = None, tokenizer_uri: str | None = None) -> Judge:
    """``config.judge``: ``guard`` (the output guard given), ``target`` (the target judging), or a model spec."""
    if config.judge == "guard":
        if guard is None:
            raise ValueError("the guard judge needs a guards stage output")
        return guard
    if config.judge == "target":
        return ChatJudge(as_judge(target, cse))
    return ChatJudge(load_chat_model(config.judge, scratch / "goat-judge", cse, judge=True, api_key_env=api_key_env,
                                     tokenizer_uri=tokenizer_uri))


def collect_goals(config: GoatConfig, interpreter_uri: str | None,
                  missing: str = "") -> tuple[list[Goal], dict[str, str]]:
    """``config.goals``' goals, spread to ``config.limit``, and the sources skipped (``missing``: why no interpreter file)."""
    goals, skipped = [], {}
    for source in config.goals:
        if source == "builtin":
            goals += builtin_goals(config.goals_per_category)
        elif interpreter_uri:
            goals += interpreter_goals(interpreter_uri)
        else:
            skipped[source] = missing
    return spread_goals(goals, config.limit), skipped
