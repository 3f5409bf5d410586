"""Running the stages together: the demo, the Prefect flows, the retraining and its commit, ``reproduce``."""
