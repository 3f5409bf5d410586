"""MLflow plumbing shared by the stages: where the store is, and the one run per trained model.

The train stage opens the run and writes a small ``run.json`` into its outputs; evaluate and
register read that file and log into the same run, so one row in the MLflow UI is one model.
mlflow is imported lazily: it costs seconds, and ranks other than 0 never need it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.io import atomic_write_text


@dataclass(frozen=True)
class RunRef:
    run_id: str
    tracking_uri: str
    experiment: str


def resolve_tracking_uri(configured: str | None, root: Path | str = ".") -> str:
    """params > MLFLOW_TRACKING_URI > an absolute sqlite file at the project root.

    The path is absolute because DVC experiments run in a temporary copy of the repository.
    """
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(root).resolve() / 'mlflow.db')}"


def artifact_root_for(tracking_uri: str) -> str | None:
    """A local sqlite store keeps its artifacts beside the database file (absolute path)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def ensure_experiment(name: str, tracking_uri: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root_for(tracking_uri))


def write_run_ref(path: Path | str, ref: RunRef) -> None:
    atomic_write_text(Path(path), json.dumps(asdict(ref), indent=2) + "\n")


def read_run_ref(path: Path | str) -> RunRef:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no MLflow run reference; run the train stage first")
    data = json.loads(path.read_text())
    return RunRef(run_id=data["run_id"], tracking_uri=data["tracking_uri"], experiment=data["experiment"])


@contextmanager
def resume_run(ref: RunRef) -> Iterator[object]:
    """Re-open the training run to add metrics, artifacts and tags to it."""
    import mlflow

    mlflow.set_tracking_uri(ref.tracking_uri)
    with mlflow.start_run(run_id=ref.run_id) as run:
        yield run


def git_commit(root: Path | str) -> str | None:
    """The checked-out commit of the project, recorded with runs and registered versions."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
