"""The MLflow model registry: registering versions, the pyfunc they are logged as, and promotion on evidence."""
