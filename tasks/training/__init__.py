"""The training library every model stage trains through.

:mod:`.loop` (the loop, its objective and callbacks), :mod:`.engine` (plain torch or
DeepSpeed: the optimizer step, schedule, clipping, checkpoints), :mod:`.optim` (µP groups,
LR schedule), :mod:`.router` (router balance), :mod:`.checkpoint` and :mod:`.shards` (the
DeepSpeed engine's optimizer state, rank by rank), :mod:`.batch` and
:mod:`.data` (what a step trains on), :mod:`.precision` (device, dtype, FP8),
:mod:`.flops`, :mod:`.history` and :mod:`.reports`, :mod:`.callbacks`,
:mod:`.distill` (the co-distillation objective and teacher targets) and
:mod:`.deepspeed_presets` (settings and memory per model preset).
"""
