"""Co-distillation from the teacher: the loss (:mod:`.losses`), the training objective (:mod:`.objective`), teacher
targets from a cache or online (:mod:`.cache`), and the with/without comparison (:mod:`.compare`)."""
