"""`python -m tasks.midtrain --run RUN --config nano ...`: the same as `herd stage midtrain ...`."""

import sys

from tasks.cli import main

sys.exit(main(stage_name="midtrain"))
