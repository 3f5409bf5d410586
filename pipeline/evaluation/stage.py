"""The evaluate stage: synthesize the validation split and score it.

Outputs in ``evaluate.out_dir``:

- ``metrics.json``: flat numbers for ``dvc metrics`` (fid, kid_mean, kid_std, miou, accuracy,
  miou_real, accuracy_real, miou_random, accuracy_random, num_images, ...) plus ``backbone`` and
  ``segmenter`` records saying exactly what produced them (a ``tiny`` FID is never paper-comparable);
- ``per_class_iou.csv``: class, name, iou_generated, iou_real (classes seen in the split);
- ``samples.png``: colourised label | generated | real.

The same numbers, tags (``fid_backbone``, ``paper_comparable``, ...) and files go to the training
run in MLflow when ``<train.out_dir>/run.json`` exists; without it (an external generator) the
files are still written and a warning says nothing was logged.

Resolution: the generator's own output size, ``(round(crop_size / aspect_ratio), crop_size)`` from
its config; label and instance maps are resized nearest, real images bicubic (see ``dataset.py``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.distributed import pick_device
from pipeline.evaluation.dataset import (
    class_names,
    dataset_fingerprint,
    eval_hw,
    ignore_classes,
    read_classes_json,
    resize_image,
    resize_map,
    split_size,
)

log = logging.getLogger(__name__)

METRIC_KEYS = (
    "fid",
    "kid_mean",
    "kid_std",
    "miou",
    "accuracy",
    "miou_real",
    "accuracy_real",
    "miou_random",
    "accuracy_random",
    "num_images",
)


class EvaluationError(ValueError):
    """An evaluation problem whose message says what is wrong and what to change."""


def _device(setting: str) -> torch.device:
    try:
        return pick_device(setting, key="evaluate.device")
    except RuntimeError as err:
        raise EvaluationError(str(err)) from None


def _describe(classes: dict) -> str:
    names = class_names(classes)
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"dataset {classes.get('dataset')!r}, label_nc {classes.get('label_nc')}, classes [{shown}]"


def check_same_classes(
    model_classes: dict | None, data_classes: dict, what: str, model_path: Path, data_root: Path
) -> None:
    """Refuse a model whose class table disagrees with the dataset's classes.json."""
    if not model_classes:
        raise EvaluationError(
            f"{what} {model_path} records no class table; it cannot be checked against {data_root}/classes.json"
        )
    problems = []
    if int(model_classes.get("label_nc", -1)) != int(data_classes["label_nc"]):
        problems.append(f"label_nc {model_classes.get('label_nc')} vs {data_classes['label_nc']}")
    a, b = class_names(model_classes), class_names(data_classes)
    if a and b and a != b:
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                problems.append(f"class {i} is {x!r} in the {what} but {y!r} in the dataset")
                break
        else:
            problems.append(f"{len(a)} class names in the {what}, {len(b)} in the dataset")
    if problems:
        raise EvaluationError(
            f"the {what} {model_path} was trained on other classes than the dataset at {data_root}: "
            + "; ".join(problems)
            + f".\n  {what}: {_describe(model_classes)}\n  dataset: {_describe(data_classes)}\n"
            "Evaluate it on the dataset it was trained on, or retrain it on this one."
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def _per_class_csv(names: list[str], iou_gen: np.ndarray, iou_real: np.ndarray, ignore: list[int]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "name", "iou_generated", "iou_real"])
    for c in range(len(iou_gen)):
        if c in ignore or (np.isnan(iou_gen[c]) and np.isnan(iou_real[c])):
            continue
        name = names[c] if c < len(names) else str(c)
        writer.writerow([c, name, *("" if np.isnan(v) else f"{v:.6f}" for v in (iou_gen[c], iou_real[c]))])
    return buf.getvalue()


class _RealFeatureCache:
    """Real-image features keyed by dataset fingerprint, backbone, size and image count."""

    def __init__(self, directory: Path | None, key_parts: dict):
        self.path = None
        if directory is not None:
            key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
            self.path = directory / f"real-features-{key}.pt"
        self.key_parts = key_parts

    def load(self) -> tuple[list[str], torch.Tensor] | None:
        if self.path is None or not self.path.is_file():
            return None
        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a broken cache entry is recomputed
            return None
        if obj.get("key") != self.key_parts:
            return None
        return list(obj["ids"]), obj["features"]

    def save(self, ids: list[str], features: torch.Tensor) -> None:
        if self.path is None:
            return
        from pipeline.io import atomic_path

        with atomic_path(self.path) as tmp:
            torch.save({"ids": ids, "key": self.key_parts, "features": features.contiguous()}, tmp)


def _log_to_mlflow(run_json: Path, metrics: dict, tags: dict, files: list[Path]) -> str | None:
    if not run_json.is_file():
        log.warning(
            "%s not found: nothing was logged to MLflow (the files in the output folder are complete)", run_json
        )
        return None
    import mlflow

    from pipeline.tracking import read_run_ref, resume_run

    ref = read_run_ref(run_json)
    with resume_run(ref):
        mlflow.log_metrics(
            {
                k: float(v)
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            }
        )
        mlflow.set_tags(tags)
        for f in files:
            mlflow.log_artifact(str(f), artifact_path="evaluate")
    return ref.run_id


def run_evaluate(params, root: Path | str = Path(".")) -> dict:
    """Synthesize the validation split with ``train.model_out`` and score it; returns metrics.json's content."""
    from tqdm import tqdm

    from gaugan.data import PreparedDataset
    from gaugan.synthesizer import Synthesizer, to_uint8
    from pipeline.evaluation.features import build_backbone
    from pipeline.evaluation.grids import sample_grid, write_png
    from pipeline.evaluation.metrics import ConfusionAccumulator, compute_fid, compute_kid
    from pipeline.evaluation.segmenter import load_segmenter
    from pipeline.io import atomic_write_json, atomic_write_text

    started = time.perf_counter()
    e = params.evaluate
    root = Path(root)
    data_root = root / params.data.out
    out_dir = root / e.out_dir
    classes = read_classes_json(data_root)
    label_nc = int(classes["label_nc"])
    names = class_names(classes)
    ignore = ignore_classes(classes, e.ignore_classes)
    device = _device(e.device)

    # Everything that can fail cheaply fails before any image is synthesized.
    available = split_size(data_root, "val")
    n = available if e.max_images is None else min(available, e.max_images)
    if n == 0:
        raise EvaluationError(
            f"{data_root}: the validation split is empty; there is nothing to evaluate. FID, KID and mIoU are "
            "computed on the 'val' split: check the ingest stage's split (manifest.parquet)"
        )
    if n < 2:
        raise EvaluationError(f"{data_root}: FID and KID need at least 2 validation images, the split has {n}")

    backbone = build_backbone(
        e.feature_extractor,
        inception_weights=(
            str(root / e.inception_weights)
            if e.inception_weights and not Path(e.inception_weights).is_absolute()
            else e.inception_weights
        ),
        allow_download=e.allow_download,
        inception_feature_dim=e.inception_feature_dim,
        tiny_dim=e.tiny_feature_dim,
    )
    backbone.module.to(device)

    gen_path = root / params.train.model_out
    if not gen_path.is_file():
        raise FileNotFoundError(f"{gen_path}: no generator; run the train stage first (or set train.model_out)")
    synth = Synthesizer.from_checkpoint(gen_path, device=str(device))
    check_same_classes(getattr(synth, "classes", None), classes, "generator", gen_path, data_root)
    config = synth.config

    seg_path = root / params.segmenter.out
    segmenter = load_segmenter(seg_path, device)
    seg_data = segmenter.meta.get("dataset", {})
    check_same_classes(
        {
            "label_nc": seg_data.get("label_nc"),
            "classes": [{"index": i, "name": name} for i, name in enumerate(seg_data.get("names", []))],
        },
        classes,
        "segmenter",
        seg_path,
        data_root,
    )
    fingerprint = dataset_fingerprint(data_root)
    if seg_data.get("fingerprint") != fingerprint:
        log.warning(
            "the segmenter %s was trained on another version of the dataset (%s, now %s)",
            seg_path,
            seg_data.get("fingerprint"),
            fingerprint,
        )

    val = PreparedDataset(data_root, "val", load_instances=bool(config.use_instance))

    hw = eval_hw(config.crop_size, float(getattr(config, "aspect_ratio", 1.0)))
    use_vae = bool(getattr(config, "use_vae", False))
    cache = _RealFeatureCache(
        (root / e.stats_cache) if e.stats_cache else None,
        {"dataset": fingerprint, "backbone": backbone.key, "hw": list(hw), "n": n},
    )

    ids: list[str] = []
    acc_gen = ConfusionAccumulator(label_nc, ignore)
    acc_real = ConfusionAccumulator(label_nc, ignore)
    acc_rand = ConfusionAccumulator(label_nc, ignore)
    fake_feats, real_feats = [], []
    keep_labels, keep_fakes, keep_reals = [], [], []
    noise_gen = torch.Generator().manual_seed(params.seed + 12345)
    # The key covers the manifest (ids, splits, source hashes); a hit skips the real images' feature pass.
    expected_ids = [str(i) for i in val.ids[:n]]
    cached = cache.load()
    cached_real = cached[1] if cached is not None and cached[0] == expected_ids else None

    bs = e.batch_size
    progress = tqdm(total=n, desc="evaluate", unit="img", dynamic_ncols=True, disable=None)
    try:
        for start in range(0, n, bs):
            items = [val[i] for i in range(start, min(n, start + bs))]
            ids += [str(it["id"]) for it in items]
            labels = np.stack([resize_map(it["label"], hw) for it in items])
            reals = np.stack([resize_image(it["image"], hw) for it in items])
            instances = None
            if config.use_instance:
                if any(it.get("instance") is None for it in items):
                    raise EvaluationError(
                        f"{data_root}: the generator uses instance maps but some validation samples have none"
                    )
                instances = torch.from_numpy(np.stack([resize_map(it["instance"], hw) for it in items]))
            style = None
            if use_vae and e.vae_style == "real":
                style = torch.from_numpy(reals).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            labels_t = torch.from_numpy(labels)
            # no-grad, batched, bf16 autocast on GPU: the Synthesizer does all three
            fake = synth(labels_t, instances=instances, style_images=style, seed=params.seed + start, batch_size=bs)
            fakes = to_uint8(fake)

            fake_feats.append(backbone.extract(torch.from_numpy(fakes), device))
            if cached_real is None:
                real_feats.append(backbone.extract(torch.from_numpy(reals), device))
            acc_gen.update(segmenter.predict(fakes, bs), labels)
            acc_real.update(segmenter.predict(reals, bs), labels)
            noise = torch.randint(0, 256, reals.shape, generator=noise_gen, dtype=torch.uint8)
            acc_rand.update(segmenter.predict(noise, bs), labels)
            k = e.num_samples - sum(len(x) for x in keep_labels)
            if k > 0:
                keep_labels.append(labels[:k])
                keep_fakes.append(fakes[:k])
                keep_reals.append(reals[:k])
            progress.update(len(items))
    finally:
        progress.close()

    fake_f = torch.cat(fake_feats)
    if cached_real is not None:
        real_f, stats_cached = cached_real, True
    else:
        real_f, stats_cached = torch.cat(real_feats), False
        cache.save(ids, real_f)

    fid = compute_fid(real_f, fake_f)
    kid_mean, kid_std, kid_size = compute_kid(real_f, fake_f, e.kid_subset_size, e.kid_subsets, seed=params.seed)
    gen_scores, real_scores, rand_scores = acc_gen.scores(), acc_real.scores(), acc_rand.scores()

    backbone_info = {
        **backbone.info,
        "num_images": n,
        "resolution": f"{hw[0]}x{hw[1]}",
        "real_features_cached": stats_cached,
    }
    metrics = {
        "fid": fid,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": kid_size,
        "miou": gen_scores.miou,
        "accuracy": gen_scores.accuracy,
        "miou_real": real_scores.miou,
        "accuracy_real": real_scores.accuracy,
        "miou_random": rand_scores.miou,
        "accuracy_random": rand_scores.accuracy,
        "num_images": n,
        "height": hw[0],
        "width": hw[1],
        "eval_seconds": round(time.perf_counter() - started, 2),
        "paper_comparable": bool(backbone.info["paper_comparable"]),
        "backbone": backbone_info,
        "segmenter": {
            "file": str(seg_path),
            "sha256": _sha256(seg_path),
            "arch": segmenter.arch,
            "dataset_fingerprint_matches": seg_data.get("fingerprint") == fingerprint,
            "miou_real_val_at_training": segmenter.meta.get("metrics", {}).get("miou_real_val"),
        },
        "generator": {"file": str(gen_path), "sha256": _sha256(gen_path)},
        "ignore_classes": ignore,
        "dataset_fingerprint": fingerprint,
    }

    metrics_path = out_dir / "metrics.json"
    csv_path = out_dir / "per_class_iou.csv"
    grid_path = out_dir / "samples.png"
    atomic_write_json(metrics_path, _finite_or_none(metrics))
    atomic_write_text(csv_path, _per_class_csv(names, gen_scores.iou, real_scores.iou, ignore))
    grid = sample_grid(np.concatenate(keep_labels), np.concatenate(keep_fakes), np.concatenate(keep_reals), classes)
    write_png(grid_path, grid)

    tags = {
        "fid_backbone": backbone.info["name"],
        "paper_comparable": "true" if backbone.info["paper_comparable"] else "false",
        "fid_weights_sha256": backbone.info.get("weights_sha256") or "",
        "fid_resize": backbone.info["resize"],
        "fid_feature_dim": str(backbone.info["feature_dim"]),
        "eval_num_images": str(n),
        "eval_resolution": f"{hw[0]}x{hw[1]}",
        "segmenter_arch": segmenter.arch,
    }
    run_id = _log_to_mlflow(
        root / params.train.out_dir / "run.json", metrics, tags, [metrics_path, csv_path, grid_path]
    )
    metrics["mlflow_run_id"] = run_id
    return metrics
