"""`python -m tasks.dpo --run RUN --config nano ...`: the same as `herd stage dpo ...`."""

import sys

from tasks.cli import main

sys.exit(main(stage_name="dpo"))
