"""herd's models in the MLflow Model Registry: registration, aliases, promotion and on-demand evaluation."""
