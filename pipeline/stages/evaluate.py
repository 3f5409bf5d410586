"""The evaluate stage: synthesize the validation split with the trained generator and score it.

Outputs in ``evaluate.out_dir``: ``metrics.json`` (FID with a bootstrap interval, KID, precision
and recall, mIoU and pixel accuracy of generated images, the same for real images as the ceiling
and for random images as the floor, LPIPS diversity of multimodal models, whether the numbers are
paper-comparable and why not, and what produced them), ``per_class_iou.csv``, ``confusion.npy`` /
``confusion.csv``, ``samples.png`` (label | generated | real) and ``per_image.npz`` (per-image
features and segmentation counts: the evidence the registry's paired bootstrap resamples,
``pipeline/evaluation/evidence.py``; register logs it with the version). The same numbers, tags and
files but per_image.npz go into the training's MLflow run when ``<train.out_dir>/run.json`` exists, or into the run a
generator file records with its store (an imported reference model's). ``gaugan-pipeline evaluate
--model FILE --out-dir DIR`` scores another generator file (it sets ``train.model_out`` and
``evaluate.out_dir`` for that call).

Resolution: the generator's own output size, ``(round(crop_size / aspect_ratio), crop_size)`` from
its config; label and instance maps are resized nearest, real images bicubic (the training
transforms' resize). Segmentation is scored at the segmenter's own size when its spec sets one.
On GPU, TF32 is off for the stage (the generator still autocasts; ``precision_modes`` says so).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.evaluation.evidence import EVIDENCE_FILE
from pipeline.evaluation.inputs import full_float32, load_inputs
from pipeline.evaluation.report import evidence, metrics_record, mlflow_tags, write_report
from pipeline.evaluation.scoring import real_feature_cache, score_split
from pipeline.params import Params, scoped
from pipeline.tracking import log_to_run, require_run_server, run_for_model

PARAMS = ("seed", "evaluate", "data.out", "train.model_out", "train.out_dir", "segmenter.out")
log = logging.getLogger(__name__)


def run(params: Params, root: Path = Path(".")) -> dict:
    """Score ``train.model_out`` on the validation split; returns metrics.json's content (+ the MLflow run id)."""
    params = scoped(params, PARAMS, "evaluate")
    root = Path(root)
    started = time.perf_counter()
    require_run_server(root / params.train.out_dir / "run.json")  # a tracking server that is down: stop now
    with full_float32():
        return _evaluate(params, root, started)


def _evaluate(params: Params, root: Path, started: float) -> dict:
    e = params.evaluate
    inputs = load_inputs(params, root)  # everything that can fail cheaply fails before any synthesis
    log.info(
        "evaluate: %d validation images of dataset %s at %dx%d on %s; FID backbone %s; segmenter %s",
        inputs.num_images,
        inputs.dataset_id,
        *inputs.hw,
        inputs.device,
        inputs.backbone.info["name"],
        f"{inputs.segmenter.arch} ({inputs.segmenter.scorer_id})",
    )
    scores = score_split(inputs, e, params.seed, real_feature_cache(inputs, e, root))
    metrics = metrics_record(inputs, scores, e, params.seed, time.perf_counter() - started)
    files = write_report(root / e.out_dir, metrics, inputs, scores)
    evidence(inputs, scores, e, params.seed).save(root / e.out_dir / EVIDENCE_FILE)
    ref = run_for_model(inputs.synth.meta, root / params.train.out_dir / "run.json")
    metrics["mlflow_run_id"] = log_to_run(ref, metrics, mlflow_tags(metrics), files, "evaluate")
    log.info(
        "evaluate: FID %.4g, KID %.4g, mIoU %.3f (real images %.3f, random %.3f); paper-comparable: %s",
        metrics["fid"],
        metrics["kid_mean"],
        metrics["miou"],
        metrics["miou_real"],
        metrics["miou_random"],
        "yes" if metrics["paper_comparable"] else "no: " + "; ".join(metrics["paper_comparable_reasons"]),
    )
    return metrics
