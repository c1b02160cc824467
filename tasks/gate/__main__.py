"""`python -m tasks.gate --variant scout --run RUN --config nano ...`: the same as `herd stage gate ...`."""

import sys

from tasks.cli import main

sys.exit(main(stage_name="gate"))
