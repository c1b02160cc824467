"""`python -m tasks.sft --run RUN --config nano ...`: the same as `herd stage sft ...`."""

import sys

from tasks.cli import main

sys.exit(main(stage_name="sft"))
