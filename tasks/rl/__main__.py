"""`python -m tasks.rl --run RUN --config nano ...`: the same as `herd stage rl ...`."""

import sys

from tasks.cli import main

sys.exit(main(stage_name="rl"))
