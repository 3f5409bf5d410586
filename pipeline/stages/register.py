"""The register stage: log the generator as an MLflow model, register it, promote it if it is better.

Reads ``train.model_out`` (the generator file), ``<evaluate.out_dir>/metrics.json`` and
``per_image.npz`` and ``<train.out_dir>/run.json`` (the training run), then:

0. with ``register.promote: if_significant``, weighs the challenger against the current champion
   (``pipeline/registry/promotion.py``): the champion's stored per-image evidence, or the champion scored
   again now on today's validation split with today's backbone and segmenter (hence this stage's
   dependence on the prepared data, the segmenter, ``weights/`` and the ``evaluate`` settings);
1. logs the pyfunc model (``pipeline/registry/pyfunc.py``) into the training run as ``generator``, the
   raw generator file as the plain artifact ``checkpoint/<file>``, the training state
   (``train.state_out``) as ``checkpoint/train_state.pt``, so any version can be continued
   elsewhere (``train.init_from: models:/NAME/VERSION``), and the per-image evidence as
   ``evaluation/per_image.npz``;
2. creates a new version of the registered model with tags: git commit, dataset and dataset id,
   the generator's sha256, training steps, the parent it was fine-tuned from (parent_version,
   parent_run_id, parent_uri, ...), the FID backbone and evaluation resolution, and every number
   in metrics.json as ``metric.<key>``;
3. points ``challenger`` at it, and ``champion`` too when ``register.promote`` says so
   (``pipeline/registry/versions.py`` takes turns and undoes everything if a later step fails); with
   ``if_significant`` the version gets ``promotion_*`` tags (both values, interval, decision);
4. writes ``register.out`` (name, version, aliases, promoted, metric, value, the champion before,
   the reason, the comparison, the model URI, the run).
"""

from __future__ import annotations

import logging
from pathlib import Path

from gaugan.checkpoint import load_generator
from pipeline.errors import MissingInputError
from pipeline.evaluation.evidence import EVIDENCE_FILE
from pipeline.evaluation.external_segmenters import EXTERNAL_ARCHS
from pipeline.params import Params, scoped
from pipeline.parents.record import parent_tags
from pipeline.registry.promotion import EvidenceJudge, log_evidence
from pipeline.registry.versions import (
    log_model,
    read_metric,
    register_version,
    tag_run,
    version_tags,
)
from pipeline.tracking import read_run_ref, require_server

PARAMS = (
    "seed",
    "register",
    "evaluate",
    "data.out",
    "train.model_out",
    "train.state_out",
    "train.out_dir",
    "segmenter.out",
    "segmenter.arch",
    "segmenter.continue_steps",
)
log = logging.getLogger(__name__)


def run(params: Params, root: Path = Path(".")) -> dict:
    """Register ``train.model_out``; returns what was written to ``register.out``."""
    params = scoped(params, PARAMS, "register")
    settings, root = params.registry, Path(root)
    ref = read_run_ref(root / params.train.out_dir / "run.json")
    require_server(ref.tracking_uri)  # a tracking server that is down: stop now, naming it
    metrics, value = read_metric(root / params.evaluate.out_dir / "metrics.json", settings.metric)
    model_path = root / params.train.model_out
    loaded = load_generator(model_path, "cpu")
    dataset = loaded.classes.dataset if loaded.classes else "model"
    name = settings.model_name or f"gaugan-{dataset}"
    if loaded.meta.get("run_id") and loaded.meta["run_id"] != ref.run_id:
        log.warning(
            "%s was trained in run %s but %s names run %s; registering into the latter",
            model_path,
            loaded.meta["run_id"],
            params.train.out_dir,
            ref.run_id,
        )
    tags = {**version_tags(metrics, loaded.meta, dataset, model_path, root), **parent_tags(loaded.meta.get("parent"))}
    tags["netG"] = loaded.config.netG  # the generator family (spade | pix2pixhd), for the registry's listing
    evidence_path = root / params.evaluate.out_dir / EVIDENCE_FILE
    judge = None
    if settings.promote == "if_significant":
        if not evidence_path.is_file():
            raise MissingInputError(
                f"{evidence_path}: no per-image evidence, which register.promote: if_significant weighs; run the "
                "evaluate stage again (or set register.promote: if_better)"
            )
        judge = EvidenceJudge(params, root, evidence_path, tags, ref.tracking_uri)
        judge.prepare(name)  # the slow part, before this registration waits for its turn
    # the segmenter goes with the version when a fine-tune of it may continue it (segmenter.continue_steps)
    continued = params.segmenter.continue_steps > 0 and params.segmenter.arch not in EXTERNAL_ARCHS
    segmenter = root / params.segmenter.out if continued else None
    info = log_model(ref, model_path, loaded.config, root / params.train.state_out, segmenter)
    if evidence_path.is_file():
        log_evidence(ref, evidence_path)
    result = register_version(ref, name, info, tags, value, settings, root / settings.out, judge)
    tag_run(ref, result)
    log.info("register: %s version %s: %s", name, result["version"], result["reason"])
    return result
