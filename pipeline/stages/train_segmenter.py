"""The train-segmenter stage: the segmentation network that scores generated images (mIoU).

Trains ``segmenter.arch`` on the real training images at the evaluation size (or only packages
``segmenter.weights`` with ``segmenter.steps: 0``) and writes ``segmenter.out`` with the dataset's
class table and id, and ``segmenter.metrics`` (train loss, mIoU on the real validation images).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from gaugan.classes import ClassTable
from gaugan.config import size_hw
from gaugan.data import PreparedDataset, dataset_id, split_size
from pipeline.distributed import pick_device
from pipeline.errors import SegmenterError
from pipeline.evaluation.segmentation_nets import MEAN, STD
from pipeline.evaluation.segmenter import Segmenter, save_segmenter, score_on_split
from pipeline.evaluation.segmenter_training import fit, initial_network
from pipeline.io import atomic_write_json, json_safe
from pipeline.params import Params, scoped

PARAMS = ("seed", "segmenter", "train.crop_size", "train.aspect_ratio", "data.out")
log = logging.getLogger(__name__)


def run(params: Params, root: Path = Path(".")) -> Path:
    """Train (or load and package) the segmenter; returns the path of ``segmenter.out``."""
    params = scoped(params, PARAMS, "train-segmenter")
    s, root = params.segmenter, Path(root)
    data_root = root / params.data.out
    classes = ClassTable.load(data_root)
    ignore = classes.ignored()  # the dataset's own list; evaluate.ignore_classes only changes scoring
    hw = size_hw(params.train.crop_size, params.train.aspect_ratio)
    device = pick_device(s.device, key="segmenter.device")
    torch.manual_seed(params.seed)  # initial weights (and a new head) depend on the seed only
    net, fresh = initial_network(s, classes.label_nc, root)
    net.to(device)
    train_set = _split(data_root, "train", required=s.steps > 0)
    log.info(
        "train-segmenter: %s for %d steps on %d training images at %dx%d on %s",
        s.arch,
        s.steps,
        len(train_set),
        *hw,
        device,
    )
    started = time.perf_counter()
    losses = fit(net, train_set, s, hw, ignore, params.seed, device) if s.steps > 0 else []
    segmenter = Segmenter(net.eval(), s.arch, classes.label_nc, device=device)
    val_set = _split(data_root, "val", required=False)
    scores = score_on_split(segmenter, val_set, hw, ignore, batch_size=s.batch_size) if len(val_set) else None
    tail = losses[-max(1, len(losses) // 10) :]
    metrics = {
        "train_loss": float(np.mean(tail)) if tail else None,
        "steps": len(losses),
        "train_seconds": round(time.perf_counter() - started, 2),
        "num_train_images": len(train_set),
        "num_val_images": len(val_set),
        "miou_real_val": scores.miou if scores else None,
        "accuracy_real_val": scores.accuracy if scores else None,
        "fresh_head_keys": len(fresh),
    }
    meta = {
        "input_hw": list(hw),
        "normalize": {"mean": list(MEAN), "std": list(STD)},
        "classes": classes.to_dict(),
        "dataset_id": dataset_id(data_root),
        "ignore": ignore,
        "seed": int(params.seed),
        "pretrained_from": s.weights,
        "metrics": {k: v for k, v in metrics.items() if v is not None},
    }
    out = save_segmenter(root / s.out, net, s.arch, classes.label_nc, s.width, meta)
    atomic_write_json(root / s.metrics, json_safe(metrics))
    log.info("train-segmenter: mIoU on the real validation images %s; written to %s", metrics["miou_real_val"], out)
    return out


def _split(data_root: Path, split: str, required: bool) -> PreparedDataset | list:
    if split_size(data_root, split):
        return PreparedDataset(data_root, split, load_instances=False)
    if required:
        raise SegmenterError(
            f"{data_root}: the {split} split is empty; the segmenter trains on the real training images"
        )
    return []
