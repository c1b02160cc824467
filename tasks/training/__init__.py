"""The training library every model stage trains through: the loop (:mod:`.loop`), engines, checkpoints, batches,
data windows, FLOPs, FP8, reports, DeepSpeed presets, and co-distillation (:mod:`.distill`)."""
