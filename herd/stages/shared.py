"""Input slots and resources that several stages' specs share."""

from __future__ import annotations

from herd.stage import Input, Resources

TOKENS = Input("the tokenizer output (token shards and tokenizer)", from_stage="tokenizer")
# What sft, rl and dpo read besides the model: the chat template, and the problems with their checkers.
POST_TRAINING_INPUTS = {
    "tokens": Input("the tokenizer output (tokenizer and chat template)", from_stage="tokenizer"),
    "problems": Input("the problems output (train.jsonl, eval.jsonl)", from_stage="problems"),
}
# One 8-GPU node, one data-parallel worker per GPU: what pretraining asks for.
GPU_NODE = Resources(cpu="32", memory="480Gi", gpus=8, shm="64Gi")
# One GPU, one process: the stages whose training loop is not data-parallel (midtrain, sft, dpo).
ONE_GPU = Resources(cpu="8", memory="120Gi", gpus=1, shm="16Gi")
