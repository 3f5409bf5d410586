"""``gaugan-pipeline compare A B``: two models side by side, in one HTML file.

The report holds: every number of both evaluations with the difference and whether the two can be
compared (the registry's rule: same dataset version, image count, resolution, style source, and
the same feature extractor or segmenter for the number; each difference named); whether each is
paper-comparable and why not; the per-class IoU differences as a chart; the same validation label
maps rendered by both generators (label | A | B | real); and both loss curves. It is written to
``<out>/<A>-vs-<B>/report.html`` (charts and the grid beside it, ``compare.json`` with the table)
and logged to MLflow (experiment ``gaugan-compare``) as artifacts of a run named after the pair.

:func:`build_report` is the entry point for other front ends (e.g. an app's model picker).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.registry.versions import comparability_differences
from pipeline.reports.charts import iou_difference_chart, iou_differences, loss_chart
from pipeline.reports.html import render_html
from pipeline.reports.sources import ModelSide, load_side

log = logging.getLogger(__name__)
EXPERIMENT = "gaugan-compare"
SHOWN_METRICS = (
    "fid", "fid_ci_low", "fid_ci_high", "kid_mean", "kid_std", "precision", "recall", "miou", "accuracy",
    "miou_real", "miou_random", "lpips_diversity", "num_images", "eval_seconds",
)  # fmt: skip
LOWER_IS_BETTER = {"fid", "fid_ci_low", "fid_ci_high", "kid_mean", "eval_seconds"}


@dataclass
class MetricRow:
    key: str
    a: float | None
    b: float | None
    comparable: bool
    why_not: str  # the differing (or unrecorded) comparability tags, "" when comparable

    @property
    def better(self) -> str:
        """ "A", "B", "=" or "" (not comparable, missing, or a count)."""
        if not self.comparable or self.a is None or self.b is None or self.key in ("num_images", "kid_std"):
            return ""
        if self.a == self.b:
            return "="
        return ("A" if self.a < self.b else "B") if self.key in LOWER_IS_BETTER else ("A" if self.a > self.b else "B")


def _comparability(side: ModelSide) -> dict:
    record = side.metrics.get("comparability")
    return record if isinstance(record, dict) else side.tags


def metric_rows(a: ModelSide, b: ModelSide) -> list[MetricRow]:
    rows = []
    for key in SHOWN_METRICS:
        va, vb = a.metrics.get(key), b.metrics.get(key)
        if va is None and vb is None:
            continue
        diffs = comparability_differences(_comparability(a), _comparability(b), key, "for B", "for A")
        rows.append(MetricRow(key, _number(va), _number(vb), not diffs, "; ".join(diffs)))
    return rows


def _number(v) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def render_maps(a: ModelSide, b: ModelSide, data_root: Path, maps: int, seed: int, device: str) -> np.ndarray | None:
    """Rows of label | A | B | real for the first ``maps`` validation maps (None when a generator is missing)."""
    if a.generator is None or b.generator is None:
        return None
    from gaugan.classes import ClassTable
    from gaugan.data import PreparedDataset
    from gaugan.synthesizer import Synthesizer
    from gaugan.transforms import resize_image, resize_map

    synths = [Synthesizer.from_checkpoint(a.generator, device=device), Synthesizer.from_checkpoint(b.generator, device)]
    classes = ClassTable.load(data_root)
    val = PreparedDataset(data_root, "val", load_instances=any(s.config.use_instance for s in synths))
    hw = max(s.training_size for s in synths)
    items = [val[i] for i in range(min(maps, len(val)))]
    labels = np.stack([resize_map(it["label"], hw) for it in items])
    instances = (
        np.stack([resize_map(it["instance"], hw) for it in items]) if items[0].get("instance") is not None else None
    )
    outputs = [s.synthesize(labels, instances if s.config.use_instance else None, seed=seed) for s in synths]
    reals = np.stack([resize_image(it["image"], hw) for it in items])
    panels = [classes.colorize(labels), *outputs, reals]
    gap = 2
    h, w = hw
    grid = np.full((len(items) * (h + gap) - gap, 4 * (w + gap) - gap, 3), 255, np.uint8)
    for i in range(len(items)):
        for j, panel in enumerate(panels):
            grid[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = panel[i]
    return grid


def build_report(
    ref_a: str,
    ref_b: str,
    tracking_uri: str,
    out_dir: Path,
    data_root: Path | None = None,
    maps: int = 4,
    seed: int = 0,
    device: str = "cpu",
    log_to_mlflow: bool = True,
) -> Path:
    """Write the report of ``ref_a`` vs ``ref_b`` under ``out_dir``; returns the HTML file's path."""
    from pipeline.evaluation.grids import write_png

    with tempfile.TemporaryDirectory(prefix="gaugan-compare-") as tmp:
        a, b = (load_side(ref, tracking_uri, Path(tmp)) for ref in (ref_a, ref_b))
        folder = Path(out_dir) / f"{a.label}-vs-{b.label}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = metric_rows(a, b)
        ious = iou_differences(a.per_class, b.per_class)
        files = {}
        if ious:
            files["iou"] = iou_difference_chart(ious, "A", "B", folder / "per_class_iou_difference.png")
        if a.losses or b.losses:
            files["losses"] = loss_chart(a.losses, b.losses, "A", "B", folder / "losses.png")
        grid = render_maps(a, b, data_root, maps, seed, device) if data_root is not None else None
        if grid is not None:
            files["samples"] = write_png(folder / "samples.png", grid)
        summary = {
            "a": _side_summary(a),
            "b": _side_summary(b),
            "metrics": [r.__dict__ | {"better": r.better} for r in rows],
            "per_class_iou": [{"name": n, "a": x, "b": y, "difference": y - x} for n, x, y in ious],
        }
        atomic_write_json(folder / "compare.json", summary)
        html = folder / "report.html"
        atomic_write_text(html, render_html(a, b, rows, ious, files, maps, seed))
    if log_to_mlflow:
        _log(tracking_uri, a, b, folder)
    log.info("compare: %s vs %s written to %s", a.ref, b.ref, html)
    return html


def _side_summary(side: ModelSide) -> dict:
    return {
        "ref": side.ref,
        "run_id": side.run_id,
        "run_name": side.run_name,
        "version": side.version,
        "paper_comparable": side.metrics.get("paper_comparable"),
        "paper_comparable_reasons": side.metrics.get("paper_comparable_reasons", []),
        "comparability": _comparability(side),
        "missing": side.missing,
    }


def _log(tracking_uri: str, a: ModelSide, b: ModelSide, folder: Path) -> None:
    import mlflow

    from pipeline.tracking import ensure_experiment, mlflow_errors

    experiment = ensure_experiment(EXPERIMENT, tracking_uri)
    with mlflow_errors(tracking_uri, "logging the compare report"):
        client = mlflow.MlflowClient(tracking_uri)
        run = client.create_run(
            experiment, run_name=f"{a.label} vs {b.label}", tags={"compare_a": a.run_id, "compare_b": b.run_id}
        )
        for path in sorted(folder.iterdir()):
            client.log_artifact(run.info.run_id, str(path), artifact_path="compare")
        client.set_terminated(run.info.run_id)
    log.info("compare: logged to MLflow run %s (experiment %s)", run.info.run_id, EXPERIMENT)
