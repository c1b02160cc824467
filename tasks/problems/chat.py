"""Problems in Llama 4's chat format, through the tokenizer stage's own chat template.

    tokenizer = load_tokenizer(".herd/artifacts/tokenizer/<hash>")
    prompt = render_prompt(tokenizer, problem, system_prompt(problem, seed))   # RL sampling
    example = render_with_answer(tokenizer, problem)                           # SFT: mask = 1 on the answer
    chosen = render_with_answer(tokenizer, problem, answer=completion)         # DPO pairs

The template (``tasks.tokenizer.special_tokens.CHAT_TEMPLATE``) wraps the assistant turn in
``{% generation %}``, so ``transformers`` marks exactly the answer and its ``<|eot|>`` as
the tokens to train on. A prompt's ids are a prefix of the same problem rendered with an
answer, so what RL samples after the prompt is what SFT trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.problems.item import Problem


@dataclass(frozen=True)
class Rendered:
    text: str
    input_ids: list[int]
    assistant_mask: list[int] | None = None  # 1 where the loss applies; None for a prompt


def load_tokenizer(path: str | Path):
    """The tokenizer stage's output folder, as ``transformers`` loads it (chat template included)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))


def messages(problem: Problem, system: str | None = None, answer: str | None = None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    turns.append({"role": "user", "content": problem.prompt})
    if answer is not None:
        turns.append({"role": "assistant", "content": answer})
    return turns


def render_prompt(tokenizer, problem: Problem, system: str | None = None) -> Rendered:
    """The conversation up to the assistant header, ready for sampling."""
    chat = messages(problem, system)
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    return Rendered(text, list(ids))


def render_with_answer(tokenizer, problem: Problem, system: str | None = None, answer: str | None = None) -> Rendered:
    """The whole exchange with ``answer`` (default: the reference), and the mask of the assistant's tokens."""
    chat = messages(problem, system, problem.answer if answer is None else answer)
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    encoded = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return Rendered(text, list(encoded["input_ids"]), list(encoded["assistant_masks"]))
