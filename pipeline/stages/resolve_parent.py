"""The resolve-parent stage: ``train.init_from`` resolved once into ``train.parent_dir``.

``dvc.yaml`` runs it every time (``always_changed``); it is cheap when nothing moved: with
``init_from: null`` it writes ``parent.json`` ``{"init_from": null, "kind": "none"}`` without
touching MLflow, and a parent whose files are already there is not fetched again. Its output
changes only when the parent did (an alias moved to another version, a file changed), and the train
stage, which depends on the folder, reruns exactly then. The work is in ``pipeline/parents/resolve.py``.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.params import Params, scoped
from pipeline.parents.resolve import resolve_parent

PARAMS = ("train.init_from", "train.parent_dir", "mlflow.tracking_uri")


def run(params: Params, root: Path = Path(".")) -> dict:
    """Write ``train.parent_dir``; returns its parent.json."""
    params = scoped(params, PARAMS, "resolve-parent")
    root, t = Path(root), params.train
    return resolve_parent(t.init_from, root / t.parent_dir, params.mlflow.tracking_uri, root).to_json()
