"""`python -m tasks.datamix --run RUN --config nano ...`: the same as `herd stage datamix ...`."""

import sys

from tasks.cli import main

sys.exit(main(stage_name="datamix"))
