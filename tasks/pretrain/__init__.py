"""Stage ``pretrain``: see :mod:`tasks.pretrain.stage`."""
