"""The evaluate stage's outputs: the numbers and what produced them, the per-class table, the confusion
matrix, the grid, the tags.

``metrics.json`` holds flat numbers for ``dvc metrics`` (fid and its bootstrap interval, kid_mean,
kid_std (null when the split is too small for subsets), precision, recall, miou, accuracy, the
real-image ceiling and noise floor, lpips_diversity, num_images, ...), ``paper_comparable`` with
the reasons it is false, the ``comparability`` record the registry and ``compare`` read, and
records saying exactly what produced the numbers: backbone, segmenter (identity and spec),
generator, device and precision, style source, dataset, and where the time went.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from pipeline.evaluation.comparable import EvaluationFacts, comparability_record, paper_comparability
from pipeline.evaluation.evidence import Evidence
from pipeline.evaluation.feature_stats import fid_bootstrap, precision_recall, split_fid
from pipeline.evaluation.grids import sample_grid, write_png
from pipeline.evaluation.inputs import EvaluationInputs
from pipeline.evaluation.metrics import compute_kid
from pipeline.evaluation.scoring import SplitScores, Stopwatch
from pipeline.io import atomic_path, atomic_write_json, atomic_write_text, json_safe, sha256_file
from pipeline.params import EvaluateSettings

UNMAPPED = "(no dataset class)"


def distribution_scores(inputs: EvaluationInputs, scores: SplitScores, e: EvaluateSettings, seed: int) -> dict:
    """FID (+ bootstrap interval), KID, precision and recall from the features; their seconds into scores.timings."""
    real, fake = scores.real_features, scores.fake_features
    clock = Stopwatch(inputs.device)
    with clock.part("fid"):
        fid, fid_method = split_fid(real, fake)
    with clock.part("fid_bootstrap"):
        interval = fid_bootstrap(real, fake, e.fid_bootstrap, seed, inputs.device)
    with clock.part("kid"):
        kid_mean, kid_std, kid_size = compute_kid(real, fake, e.kid_subset_size, e.kid_subsets, seed=seed)
    with clock.part("precision_recall"):
        pr = precision_recall(real, fake, k=e.precision_recall_k) if len(fake) > e.precision_recall_k else None
    scores.timings.update(clock.seconds)
    return {
        "fid": fid,
        "fid_method": fid_method,
        "fid_ci_low": interval["low"] if interval else None,
        "fid_ci_high": interval["high"] if interval else None,
        "fid_bootstrap_std": interval["std"] if interval else None,
        "fid_bootstrap_replicates": interval["replicates"] if interval else 0,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": kid_size,
        "kid_subsets": e.kid_subsets if kid_std is not None else 1,
        "precision": pr["precision"] if pr else None,
        "recall": pr["recall"] if pr else None,
        "precision_recall_k": e.precision_recall_k,
    }


def metrics_record(
    inputs: EvaluationInputs, scores: SplitScores, e: EvaluateSettings, seed: int, seconds: float
) -> dict:
    numbers = distribution_scores(inputs, scores, e, seed)
    gen, real, rand = scores.generated, scores.real, scores.random
    assert real is not None and rand is not None, "metrics_record needs a pass with bounds (score_split)"
    h, w = inputs.hw
    backbone = inputs.backbone.info
    comparable, reasons = _paper_comparability(inputs, scores)
    comparability = comparability_record(
        inputs.dataset_id,
        inputs.split_id,
        inputs.num_images,
        inputs.hw,
        inputs.style_source,
        backbone["name"],
        inputs.segmenter.scorer_id,
    )
    return {
        **numbers,
        "miou": gen.miou,
        "accuracy": gen.accuracy,
        "miou_real": real.miou,
        "accuracy_real": real.accuracy,
        "miou_random": rand.miou,
        "accuracy_random": rand.accuracy,
        "lpips_diversity": scores.diversity,
        "num_images": inputs.num_images,
        "height": h,
        "width": w,
        "eval_seconds": round(seconds, 2),
        "paper_comparable": comparable,
        "paper_comparable_reasons": reasons,
        "comparability": comparability,
        "style_source": inputs.style_source,
        "precision_modes": inputs.precision,
        "backbone": {
            **backbone,
            "num_images": inputs.num_images,
            "resolution": f"{h}x{w}",
            "real_features_cached": scores.real_features_cached,
        },
        "segmenter": segmenter_record(inputs),
        "diversity": _diversity_record(inputs, e),
        "generator": {"file": str(inputs.generator_path), "sha256": sha256_file(inputs.generator_path)},
        "ignore_classes": inputs.ignore,
        "scored_classes": inputs.classes.label_nc - len(inputs.ignore),
        "dataset": inputs.classes.dataset,
        "dataset_id": inputs.dataset_id,
        "val_split_id": inputs.split_id,
        "split_size": inputs.split_size,
        "timings": {k: round(v, 3) for k, v in sorted(scores.timings.items())},
    }


def _paper_comparability(inputs: EvaluationInputs, scores: SplitScores) -> tuple[bool, list[str]]:
    facts = EvaluationFacts(
        inputs.classes.dataset,
        inputs.split_size,
        inputs.num_images,
        inputs.hw,
        inputs.backbone.info,
        inputs.style_source,
        scores.unlabelled_maps,
    )
    return paper_comparability(facts)


def _diversity_record(inputs: EvaluationInputs, e: EvaluateSettings) -> dict | None:
    if not inputs.diversity:
        return None
    maps = min(e.diversity_maps, inputs.num_images)
    return {**inputs.diversity.info, "maps": maps, "samples_per_map": e.diversity_samples}


def segmenter_record(inputs: EvaluationInputs) -> dict:
    seg = inputs.segmenter
    meta = seg.meta
    return {
        "file": str(inputs.segmenter_path),
        "sha256": sha256_file(inputs.segmenter_path),
        "id": seg.scorer_id,
        "arch": seg.arch,
        "num_outputs": seg.outputs,
        "model_file": meta.get("model_file"),
        "model_sha256": meta.get("model_sha256"),
        "spec": seg.spec.to_dict(),
        "dataset_id_matches": meta.get("dataset_id") == inputs.dataset_id,
        "miou_real_val_at_training": meta.get("metrics", {}).get("miou_real_val"),
    }


def per_class_csv(
    names: tuple[str, ...], iou_gen: np.ndarray, iou_real: np.ndarray, pixels: np.ndarray, ignore: list[int]
) -> str:
    """class, name, iou_generated, iou_real, pixels (of ground truth) for the scored classes seen in the split."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "name", "iou_generated", "iou_real", "pixels"])
    for c in range(len(iou_gen)):
        if c in ignore or (np.isnan(iou_gen[c]) and np.isnan(iou_real[c])):
            continue
        name = names[c] if c < len(names) else str(c)
        values = ("" if np.isnan(v) else f"{v:.6f}" for v in (iou_gen[c], iou_real[c]))
        writer.writerow([c, name, *values, int(pixels[c])])
    return buf.getvalue()


def confusion_csv(names: tuple[str, ...], confusion: np.ndarray, unmapped: np.ndarray | None) -> str:
    """The confusion matrix with class names: one row per ground-truth class, one column per prediction."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["truth \\ prediction", *names, *([UNMAPPED] if unmapped is not None else [])])
    for c, row in enumerate(confusion):
        writer.writerow([names[c], *row.tolist(), *([int(unmapped[c])] if unmapped is not None else [])])
    return buf.getvalue()


def write_report(out_dir: Path, metrics: dict, inputs: EvaluationInputs, scores: SplitScores) -> list[Path]:
    """metrics.json, per_class_iou.csv, confusion.npy/.csv and samples.png, each written atomically."""
    names = inputs.classes.names
    gen = scores.generated
    paths = [
        out_dir / f for f in ("metrics.json", "per_class_iou.csv", "confusion.npy", "confusion.csv", "samples.png")
    ]
    atomic_write_json(paths[0], json_safe(metrics))
    pixels = gen.confusion.sum(axis=1) + (gen.unmapped if gen.unmapped is not None else 0)
    real_iou = scores.real.iou if scores.real is not None else np.full_like(gen.iou, np.nan)
    atomic_write_text(paths[1], per_class_csv(names, gen.iou, real_iou, pixels, inputs.ignore))
    with atomic_path(paths[2]) as tmp, open(tmp, "wb") as fh:
        np.save(fh, gen.confusion)
    atomic_write_text(paths[3], confusion_csv(names, gen.confusion, gen.unmapped))
    s = scores.samples
    write_png(paths[4], sample_grid(s["labels"], s["fakes"], s["reals"], inputs.classes))
    return paths


def evidence(inputs: EvaluationInputs, scores: SplitScores, e: EvaluateSettings, seed: int) -> Evidence:
    """The pass's per-image rows (``per_image.npz``) and what they were scored with."""
    counts = scores.per_image
    return Evidence(
        ids=np.array([str(i) for i in inputs.val.ids[: inputs.num_images]]),
        fake_features=scores.fake_features.float().cpu().numpy(),
        real_features=scores.real_features.float().cpu().numpy(),
        inter=counts["inter"],
        union=counts["union"],
        correct=counts["correct"],
        labelled=counts["labelled"],
        meta={
            "val_split_id": inputs.split_id,
            "dataset_id": inputs.dataset_id,
            "fid_backbone": inputs.backbone.info["name"],
            "backbone_key": inputs.backbone.key,
            "segmenter_id": inputs.segmenter.scorer_id,
            "ignore": list(inputs.ignore),
            "average": inputs.segmenter.spec.average,
            "class_names": list(inputs.classes.names),
            "kid": {"subset_size": e.kid_subset_size, "subsets": e.kid_subsets, "seed": seed},
            "resolution": f"{inputs.hw[0]}x{inputs.hw[1]}",
            "style_source": inputs.style_source,
            "device": inputs.precision["device_name"],
            "generator_sha256": sha256_file(inputs.generator_path),
        },
    )


def mlflow_tags(metrics: dict) -> dict[str, str]:
    """What the numbers are comparable with (the registry and ``compare`` compare only like with like)."""
    backbone, seg, modes = metrics["backbone"], metrics["segmenter"], metrics["precision_modes"]
    reasons = "; ".join(metrics["paper_comparable_reasons"])
    return {
        **metrics["comparability"],
        "paper_comparable": "true" if metrics["paper_comparable"] else "false",
        "paper_comparable_reasons": reasons[:4900] if reasons else "all conditions hold",
        "fid_weights_sha256": backbone.get("weights_sha256") or "",
        "fid_resize": backbone["resize"],
        "fid_feature_dim": str(backbone["feature_dim"]),
        "segmenter_arch": seg["arch"],
        "eval_device": modes["device"],
        "eval_generator_precision": modes["generator"],
    }
