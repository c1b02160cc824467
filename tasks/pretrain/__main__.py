"""`python -m tasks.pretrain --run RUN --config nano ...`: the same as `herd stage pretrain ...`."""

import sys

from tasks.cli import main

sys.exit(main(stage_name="pretrain"))
