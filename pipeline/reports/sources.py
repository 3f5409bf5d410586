"""What a report reads about one model: its MLflow run, evaluation, loss history and generator file.

A model is named by a run id (``runs:/<id>`` or the bare id), a registered version
(``models:/NAME/VERSION``) or an alias (``models:/NAME@ALIAS``); a version leads to the run it was
registered from. From the run: ``evaluate/metrics.json`` and ``evaluate/per_class_iou.csv`` (logged
by the evaluate stage), ``train/losses.csv`` (train), and the generator file
(``checkpoint/*.pt``, logged by register). Anything missing is recorded as missing, never guessed.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ModelNotFoundError
from pipeline.registry.versions import parse_registered, registered_version
from pipeline.tracking import mlflow_errors

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class ModelSide:
    ref: str  # as the user gave it
    label: str  # short name for headings and file names
    run_id: str
    run_name: str
    version: str | None  # registered version, when named by one
    metrics: dict = field(default_factory=dict)  # evaluate/metrics.json (empty when not logged)
    per_class: list[dict] = field(default_factory=list)  # rows of evaluate/per_class_iou.csv
    losses: list[dict] = field(default_factory=list)  # rows of train/losses.csv
    generator: Path | None = None
    tags: dict = field(default_factory=dict)  # the run's tags
    missing: list[str] = field(default_factory=list)  # what could not be found, in words


def _run_of(ref: str, client) -> tuple[str, str | None, str]:
    """-> (run id, registered version or None, label)."""
    parsed = parse_registered(ref)
    if parsed is not None:
        name, alias, _ = parsed
        mv = registered_version(ref, client)
        return mv.run_id, str(mv.version), f"{name}-v{mv.version}" + (f"-{alias}" if alias else "")
    run_id = ref[len("runs:/") :].split("/")[0] if ref.startswith("runs:/") else ref
    if not RUN_ID.match(run_id):
        raise ModelNotFoundError(
            f"{ref}: not a model reference; give an MLflow run id (or runs:/<id>), models:/NAME/VERSION or "
            "models:/NAME@ALIAS"
        )
    return run_id, None, f"run-{run_id[:8]}"


def _download(client, run_id: str, path: str, dst: Path) -> Path | None:
    from mlflow.exceptions import MlflowException

    try:
        listed = {a.path for a in client.list_artifacts(run_id, str(Path(path).parent))}
        if path not in listed:
            return None
        return Path(client.download_artifacts(run_id, path, str(dst)))
    except (MlflowException, OSError):
        return None


def _rows(path: Path | None) -> list[dict]:
    if path is None:
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _generator(client, run_id: str, dst: Path) -> Path | None:
    from mlflow.exceptions import MlflowException

    try:
        files = [a.path for a in client.list_artifacts(run_id, "checkpoint") if a.path.endswith(".pt")]
    except MlflowException:
        return None
    return _download(client, run_id, files[0], dst) if files else None


def load_side(ref: str, tracking_uri: str, workdir: Path) -> ModelSide:
    """Everything the report shows about ``ref``, read from the MLflow store at ``tracking_uri``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri)
    with mlflow_errors(tracking_uri, f"looking up {ref}"):
        run_id, version, label = _run_of(ref, client)
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise ModelNotFoundError(f"{ref}: no MLflow run {run_id} in {tracking_uri}") from None
        dst = workdir / label
        dst.mkdir(parents=True, exist_ok=True)
        side = ModelSide(ref, label, run_id, run.info.run_name or run_id[:8], version, tags=dict(run.data.tags))
        metrics_file = _download(client, run_id, "evaluate/metrics.json", dst)
        side.metrics = json.loads(metrics_file.read_text()) if metrics_file else {}
        side.per_class = _rows(_download(client, run_id, "evaluate/per_class_iou.csv", dst))
        side.losses = _rows(_download(client, run_id, "train/losses.csv", dst))
        side.generator = _generator(client, run_id, dst)
    for what, present in (
        ("evaluate/metrics.json (run the evaluate stage)", side.metrics),
        ("evaluate/per_class_iou.csv", side.per_class),
        ("train/losses.csv (the train stage's loss history)", side.losses),
        ("a generator file under checkpoint/ (logged by the register stage)", side.generator),
    ):
        if not present:
            side.missing.append(what)
    return side
