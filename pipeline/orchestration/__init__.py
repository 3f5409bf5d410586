"""Running the stages together: the demo, the Prefect flows, the retraining plan and commit, the tools' environment."""
