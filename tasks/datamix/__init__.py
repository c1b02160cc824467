"""Stage ``datamix``: see :mod:`tasks.datamix.stage`."""
