"""Stage ``codistill``: the teacher's top-k cached once for the students (:mod:`.stage`, :mod:`.cache`), and the
with/without comparison (:mod:`.compare`). The loss, the objective and the teacher targets the students' training
reads are in :mod:`tasks.training.distill`."""
