"""Serving a model: the ``synthesize`` command and the painting app (the MLflow pyfunc is the registry's)."""
