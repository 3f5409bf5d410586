"""Serving a model: the ``synthesize`` command, the MLflow pyfunc (``mlflow models serve``) and the painting app."""
