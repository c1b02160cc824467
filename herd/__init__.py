"""herd's contract package: what a stage is, its typed config, and where its output lives.

Only the standard library and pydantic are imported here, so that Airflow can parse the
DAGs without touching torch, MLflow or any storage client. ``tasks/`` does the work;
``dags/`` only declares it.
"""

__version__ = "0.1.0"
