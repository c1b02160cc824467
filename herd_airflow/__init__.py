"""herd's Airflow side: the one factory that turns a stage into an operator, and the operators."""
