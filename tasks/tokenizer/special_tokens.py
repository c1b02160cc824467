"""Llama 4's special tokens and chat format, laid out in Llama 4's order.

Llama 4 numbers its specials after a 200,000-token BPE vocabulary and pads every group
with reserved tokens up to 2,048 in all. herd keeps every named token in the same order
and the same groups and scales the trailing reserved range to the config, so the ids are
``vocab_size + position`` here instead of ``200000 + position``.
"""

from __future__ import annotations

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
HEADER_START = "<|header_start|>"
HEADER_END = "<|header_end|>"
EOT = "<|eot|>"
EOM = "<|eom|>"
PAD = "<|finetune_right_pad|>"


def _reserved(group: str, start: int, count: int) -> list[str]:
    return [f"<|{group}reserved_special_token_{start + i}|>" for i in range(count)]


NAMED = [
    BEGIN_OF_TEXT, END_OF_TEXT, "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    HEADER_START, HEADER_END, EOM, EOT, "<|step|>",
    *_reserved("text_post_train_", 0, 8),
    PAD, "<|python_start|>", "<|python_end|>",
    "<|image_start|>", "<|image_end|>", *_reserved("vision_", 0, 2),
    "<|tile_x_separator|>", "<|tile_y_separator|>", *_reserved("vision_", 2, 4),
    "<|image|>", *_reserved("vision_", 6, 1), "<|patch|>",
    *_reserved("reasoning_", 0, 8), "<|reasoning_thinking_start|>", "<|reasoning_thinking_end|>",
]


def special_tokens(num_reserved: int) -> list[str]:
    return NAMED + _reserved("", 0, num_reserved)


# Llama 4's turn format; {% generation %} marks the assistant tokens that SFT trains on
# (transformers' return_assistant_tokens_mask).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|header_start|>' + message['role'] + '<|header_end|>\\n\\n' }}"
    "{%- if message['content'] is string %}{%- set content = message['content'] | trim %}"
    "{%- else %}{%- set content = namespace(text='') %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{%- set content.text = content.text + part['text'] | trim %}"
    "{%- elif part['type'] == 'image' %}{%- set content.text = content.text + '<|image|>' %}{%- endif %}"
    "{%- endfor %}{%- set content = content.text %}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}{% generation %}{{- content + '<|eot|>' }}{% endgeneration %}"
    "{%- else %}{{- content + '<|eot|>' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|header_start|>assistant<|header_end|>\\n\\n' }}{%- endif %}"
)
