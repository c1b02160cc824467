"""`python -m tasks.tokenizer --run RUN --config nano ...`: the same as `herd stage tokenizer ...`."""

import sys

from tasks.cli import main

sys.exit(main(stage_name="tokenizer"))
