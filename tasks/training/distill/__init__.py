"""Co-distillation inside the training loop: the loss (:mod:`.losses`), the objective and its soft-weight record
(:mod:`.objective`), and the teacher targets, cached or online (:mod:`.teachers`)."""
