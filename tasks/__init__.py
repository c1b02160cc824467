"""herd's compute side: one package per stage, each run as a process by ``tasks.cli``."""

import os

# OpenMP threads that spin while they wait hold a core each; when several stage processes
# share a few cores (a laptop, CI, parallel Airflow tasks) the spinning starves the others:
# nano training ran 2-4x slower on 2 busy cores with the default policy than with PASSIVE
# (bench/omp_wait_policy.py).
# It must be set before torch loads libgomp, hence here; a user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
