"""train's side of a parent model: load the parent that ``train.parent_dir`` holds (the resolve-parent
stage's output, read through :class:`~pipeline.parents.record.ParentRecord`) and tag the run with it.

The train stage never asks the registry and reads only this project's own formats: an alias was
resolved to a version and its files fetched, and an NVlabs checkpoint converted to a training
state, by resolve-parent. The files' hashes are checked against ``parent.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.parents.record import ParentRecord, parent_tags

if TYPE_CHECKING:
    from gaugan.parent import ParentModel


def load_parent_model(parent_dir: Path, record: ParentRecord) -> ParentModel | None:
    """The parent's networks (None for ``kind: none``), from :meth:`ParentRecord.weights_file`."""
    from gaugan.parent import read_parent_file  # torch: not needed to resolve, nor without a parent

    if record.kind == "none":
        return None
    parent = read_parent_file(parent_dir / record.weights_file())
    parent.source = record.source()
    return parent


def run_parent_tags(summary: dict | None) -> dict[str, str]:
    """The training run's tags of its parent (``parent_kind: none`` without one) and the warnings of its loading."""
    if not summary:
        return {"parent_kind": "none"}
    tags = parent_tags(summary)
    if summary.get("warnings"):
        tags["init_warnings"] = " | ".join(summary["warnings"])
    return tags
