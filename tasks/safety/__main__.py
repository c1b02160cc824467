"""`python -m tasks.safety --variant scout --run RUN --config nano ...`: the same as `herd stage safety ...`."""

import sys

from tasks.cli import main

sys.exit(main(stage_name="safety"))
