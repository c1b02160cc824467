"""herd's Airflow side: the DAG builder, the one factory that turns a herd command into an operator, the operators.

Imports go one way: ``builder`` -> ``registry`` -> ``factory`` -> the operators (``local``,
``kubernetes``, ``gang``) -> ``manifests`` -> :mod:`herd`.
"""
