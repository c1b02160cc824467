"""Stage ``tokenizer``: see :mod:`tasks.tokenizer.stage`."""
