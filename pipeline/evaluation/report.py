"""The evaluate stage's outputs: the numbers and what produced them, the per-class table, the grid, the tags.

``metrics.json`` holds flat numbers for ``dvc metrics`` (fid, kid_mean, kid_std, miou, accuracy,
miou_real, accuracy_real, miou_random, accuracy_random, num_images, ...) plus ``backbone``,
``segmenter`` and ``generator`` records saying exactly what produced them: a ``tiny`` FID is never
paper-comparable.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from pipeline.evaluation.inputs import EvaluationInputs
from pipeline.evaluation.metrics import compute_fid, compute_kid
from pipeline.evaluation.scoring import SplitScores
from pipeline.grids import sample_grid, write_png
from pipeline.io import atomic_write_json, atomic_write_text, json_safe, sha256_file
from pipeline.params import EvaluateSettings


def metrics_record(
    inputs: EvaluationInputs, scores: SplitScores, e: EvaluateSettings, seed: int, seconds: float
) -> dict:
    fid = compute_fid(scores.real_features, scores.fake_features)
    kid_mean, kid_std, kid_size = compute_kid(
        scores.real_features, scores.fake_features, e.kid_subset_size, e.kid_subsets, seed=seed
    )
    gen, real, rand = scores.generated, scores.real, scores.random
    h, w = inputs.hw
    backbone = inputs.backbone.info
    seg_meta = inputs.segmenter.meta
    return {
        "fid": fid,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": kid_size,
        "miou": gen.miou,
        "accuracy": gen.accuracy,
        "miou_real": real.miou,
        "accuracy_real": real.accuracy,
        "miou_random": rand.miou,
        "accuracy_random": rand.accuracy,
        "num_images": inputs.num_images,
        "height": h,
        "width": w,
        "eval_seconds": round(seconds, 2),
        "paper_comparable": bool(backbone["paper_comparable"]),
        "backbone": {
            **backbone,
            "num_images": inputs.num_images,
            "resolution": f"{h}x{w}",
            "real_features_cached": scores.real_features_cached,
        },
        "segmenter": {
            "file": str(inputs.segmenter_path),
            "sha256": sha256_file(inputs.segmenter_path),
            "arch": inputs.segmenter.arch,
            "dataset_id_matches": seg_meta.get("dataset_id") == inputs.dataset_id,
            "miou_real_val_at_training": seg_meta.get("metrics", {}).get("miou_real_val"),
        },
        "generator": {"file": str(inputs.generator_path), "sha256": sha256_file(inputs.generator_path)},
        "ignore_classes": inputs.ignore,
        "dataset_id": inputs.dataset_id,
    }


def per_class_csv(names: tuple[str, ...], iou_gen: np.ndarray, iou_real: np.ndarray, ignore: list[int]) -> str:
    """class, name, iou_generated, iou_real for the classes seen in the split and not ignored."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "name", "iou_generated", "iou_real"])
    for c in range(len(iou_gen)):
        if c in ignore or (np.isnan(iou_gen[c]) and np.isnan(iou_real[c])):
            continue
        name = names[c] if c < len(names) else str(c)
        writer.writerow([c, name, *("" if np.isnan(v) else f"{v:.6f}" for v in (iou_gen[c], iou_real[c]))])
    return buf.getvalue()


def write_report(out_dir: Path, metrics: dict, inputs: EvaluationInputs, scores: SplitScores) -> list[Path]:
    """metrics.json, per_class_iou.csv and samples.png, each written atomically; -> their paths."""
    paths = [out_dir / "metrics.json", out_dir / "per_class_iou.csv", out_dir / "samples.png"]
    atomic_write_json(paths[0], json_safe(metrics))
    iou_gen, iou_real = scores.generated.iou, scores.real.iou
    atomic_write_text(paths[1], per_class_csv(inputs.classes.names, iou_gen, iou_real, inputs.ignore))
    s = scores.samples
    write_png(paths[2], sample_grid(s["labels"], s["fakes"], s["reals"], inputs.classes))
    return paths


def mlflow_tags(inputs: EvaluationInputs) -> dict[str, str]:
    """What the numbers are comparable with (the registry compares only like with like)."""
    info = inputs.backbone.info
    h, w = inputs.hw
    return {
        "fid_backbone": info["name"],
        "paper_comparable": "true" if info["paper_comparable"] else "false",
        "fid_weights_sha256": info.get("weights_sha256") or "",
        "fid_resize": info["resize"],
        "fid_feature_dim": str(info["feature_dim"]),
        "eval_num_images": str(inputs.num_images),
        "eval_resolution": f"{h}x{w}",
        "segmenter_arch": inputs.segmenter.arch,
    }
