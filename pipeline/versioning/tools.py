"""The environment of the tools the pipeline starts: DVC, and through it the stage commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.offline import OFFLINE_ENV
from pipeline.tracking import resolve_tracking_uri


def tool_env(repo: Path) -> dict[str, str]:
    """For DVC and the stages it runs: this interpreter's tools first on PATH, an absolute MLflow
    store (DVC experiments run in a copy of the repository), unbuffered output."""
    env = {**OFFLINE_ENV, **os.environ}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["MLFLOW_TRACKING_URI"] = resolve_tracking_uri(None, repo)
    env["PYTHONUNBUFFERED"] = "1"
    return env
