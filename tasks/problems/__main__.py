"""`python -m tasks.problems --run RUN --config nano ...`: the same as `herd stage problems ...`."""

import sys

from tasks.cli import main

sys.exit(main(stage_name="problems"))
