"""train's side of a parent model: read ``train.parent_dir`` (the resolve-parent stage's output), load
the parent, and say what it was (MLflow tags, the generator file's meta, the resume fingerprint).

The train stage never asks the registry and reads only this project's own formats: an alias was
resolved to a version and its files fetched, and an NVlabs checkpoint converted to a training
state, by resolve-parent. The files' hashes are checked against ``parent.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import MissingInputError, TrainError
from pipeline.io import sha256_file

if TYPE_CHECKING:
    from gaugan.parent import ParentModel

log = logging.getLogger(__name__)

# what the resolve-parent stage (pipeline/parents/resolve.py) writes into train.parent_dir
PARENT_JSON = "parent.json"
GENERATOR_FILE = "generator.pt"
STATE_FILE = "train_state.pt"
SEGMENTER_FILE = "segmenter.pt"  # the segmenter the parent was scored with: train-segmenter continues from it


def read_parent_record(parent_dir: Path, init_from: str | None) -> dict:
    """parent.json, refusing a record of another ``train.init_from`` or whose files changed since it was
    written. Without one, ``init_from: null`` means no parent (the train command run by hand)."""
    path = parent_dir / PARENT_JSON
    if not path.is_file():
        if init_from is None:
            return {"init_from": None, "kind": "none"}
        raise MissingInputError(
            f"{path}: no parent record for train.init_from {init_from!r}; run the resolve-parent stage first "
            "(`dvc repro` does, or `gaugan-pipeline resolve-parent`)"
        )
    record = json.loads(path.read_text())
    if record.get("init_from") != init_from:
        raise TrainError(
            f"{path} was resolved for train.init_from {record.get('init_from')!r}, params.yaml says {init_from!r}; "
            "run the resolve-parent stage again (`dvc repro` does)"
        )
    for name, expected in (record.get("files") or {}).items():
        if not (parent_dir / name).is_file() or sha256_file(parent_dir / name) != expected:
            raise TrainError(
                f"{parent_dir / name} is not the file {path} records (sha256 {expected[:12]}...); "
                "run the resolve-parent stage again"
            )
    return record


def load_parent_model(parent_dir: Path, record: dict) -> ParentModel | None:
    """The parent's networks (None for ``kind: none``): the training state when there is one (it has D
    and the EMA; an NVlabs checkpoint was converted to one), else the generator file."""
    from gaugan.parent import read_parent_file  # torch: not needed to resolve, nor without a parent

    if record["kind"] == "none":
        return None
    files = record.get("files") or {}
    source = record["uri"] if record["kind"] != "registry" else f"{record['init_from']} (version {record['version']})"
    name = STATE_FILE if STATE_FILE in files else GENERATOR_FILE
    parent = read_parent_file(parent_dir / name)
    parent.source = source
    return parent


def parent_identity(record: dict) -> dict | None:
    """What a resume checkpoint must match besides the settings: the exact parent (None: no parent)."""
    if record["kind"] == "none":
        return None
    return {k: record.get(k) for k in ("kind", "uri", "version", "run_id", "files")}


def parent_summary(record: dict, warnings: list[str]) -> dict:
    """The parent as the generator file's meta ``parent`` and the run's tags record it."""
    keys = ("kind", "init_from", "uri", "name", "version", "run_id", "dataset_id")
    return {**{k: record.get(k) for k in keys if record.get(k) is not None}, "warnings": warnings}


def parent_tags(summary: dict | None) -> dict[str, str]:
    """MLflow tags of the training run: parent_version, parent_run_id, parent_dataset_id, parent_uri, ..."""
    if not summary:
        return {"parent_kind": "none"}
    tags = {f"parent_{k}": str(summary[k]) for k in ("kind", "uri", "version", "run_id", "dataset_id") if k in summary}
    if summary.get("warnings"):
        tags["init_warnings"] = " | ".join(summary["warnings"])
    return tags
