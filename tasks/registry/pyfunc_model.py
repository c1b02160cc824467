"""The Python model of every registry version, as MLflow's "models from code" wants it: a file MLflow runs
when it loads the model, naming the model with ``set_model``. Nothing is pickled; what it does is
:class:`tasks.registry.serving.TextGenerator`. Not imported by herd itself."""

import mlflow

from tasks.registry.serving import TextGenerator

mlflow.models.set_model(TextGenerator())
