"""Environment variables that keep DVC, MLflow, Prefect and albumentations from phoning home.

They must be set before those libraries are imported, so ``pipeline/__init__`` calls this first.
"""

import os

OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",  # MLflow only honours the string "true"
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # the 20 s default times out on a loaded 2-core machine
}


def set_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
