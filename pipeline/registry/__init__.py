"""The MLflow model registry: registering versions, promotion on evidence, and the data lineage a version carries."""
