"""`python -m tasks.guards --run RUN --config nano ...`: the same as `herd stage guards ...`."""

import sys

from tasks.cli import main

sys.exit(main(stage_name="guards"))
