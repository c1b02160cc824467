"""herd's models in the MLflow Model Registry: registration, aliases, promotion and on-demand evaluation;
and the verdict on a candidate (:mod:`verdict`), which the gate stage and promotion both judge with."""
