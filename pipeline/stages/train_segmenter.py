"""The train-segmenter stage: the segmentation network that scores generated images (mIoU).

Trains ``segmenter.arch`` on the real training images (or only packages ``segmenter.weights``
with ``segmenter.steps: 0``), or packages a network exported elsewhere (``torchscript``/``onnx``:
the paper's DeepLabV2, UperNet101, DRN-D-105), and writes ``segmenter.out`` with the spec
(preprocessing, scoring size, class map, averaging), the dataset's class table and id, and
``segmenter.metrics`` (train loss, mIoU on the real validation images: the ceiling).
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
from pipeline.evaluation.external_segmenters import EXTERNAL_ARCHS, load_external, probe_outputs
from pipeline.evaluation.segmentation_nets import build_network
from pipeline.evaluation.segmenter import Segmenter, save_segmenter, score_on_split
from pipeline.evaluation.segmenter_spec import SegmenterSpec, read_class_map
from pipeline.evaluation.segmenter_training import fit, grow_into, initial_network
from pipeline.io import atomic_write_json, json_safe, sha256_file
from pipeline.params import Params, SegmenterSettings, scoped
from pipeline.parents.record import SEGMENTER_FILE

PARAMS = ("seed", "segmenter", "train.crop_size", "train.aspect_ratio", "train.parent_dir", "data.out")
# the settings a parent's segmenter must share to be continued (anything else: trained from scratch)
CONTINUE_KEYS = ("arch", "weights", "width", "channel_order", "pixel_range", "mean", "std", "input_size", "upsample")
log = logging.getLogger(__name__)


def run(params: Params, root: Path = Path(".")) -> Path:
    """Train, or package, the segmenter; returns the path of ``segmenter.out``."""
    params = scoped(params, PARAMS, "train-segmenter")
    s, root = params.segmenter, Path(root)
    data_root = root / params.data.out
    classes = ClassTable.load(data_root)
    ignore = classes.ignored()  # the dataset's own list; evaluate.ignore_classes only changes scoring
    hw = size_hw(params.train.crop_size, params.train.aspect_ratio)
    device = pick_device(s.device, key="segmenter.device")
    spec, class_map_file = spec_from_settings(s, root)
    started = time.perf_counter()
    if s.arch in EXTERNAL_ARCHS:
        segmenter, extra = _package_external(s, spec, classes.label_nc, hw, root, device)
        losses: list[float] = []
    else:
        parent = _parent_segmenter(s, root / params.train.parent_dir, classes, hw)
        segmenter, losses = _train(s, spec, classes.label_nc, hw, ignore, params.seed, data_root, root, device, parent)
        extra = {"fresh_head_keys": segmenter.meta.pop("fresh_head_keys"), "settings": _continue_settings(s, hw)}
        if parent is not None:
            extra["continued_from"] = {"file": str(parent["path"]), "sha256": parent["sha256"]}
    val_set = _split(data_root, "val", required=False)
    scores = score_on_split(segmenter, val_set, hw, ignore, batch_size=s.batch_size) if len(val_set) else None
    tail = losses[-max(1, len(losses) // 10) :]
    metrics = {
        "train_loss": float(np.mean(tail)) if tail else None,
        "steps": len(losses),
        "train_seconds": round(time.perf_counter() - started, 2),
        "num_train_images": split_size(data_root, "train"),
        "num_val_images": len(val_set),
        "miou_real_val": scores.miou if scores else None,
        "accuracy_real_val": scores.accuracy if scores else None,
        "fresh_head_keys": extra.pop("fresh_head_keys", 0),
        "continued_from_parent": "continued_from" in extra,
    }
    meta = {
        "input_hw": list(hw),
        "classes": classes.to_dict(),
        "dataset_id": dataset_id(data_root),
        "ignore": ignore,
        "seed": int(params.seed),
        "pretrained_from": s.weights,
        "class_map_file": class_map_file,
        "metrics": {k: v for k, v in metrics.items() if v is not None},
        **extra,
    }
    out = save_segmenter(
        root / s.out,
        segmenter.net if s.arch not in EXTERNAL_ARCHS else None,
        s.arch,
        classes.label_nc,
        s.width,
        meta,
        spec=spec,
        model_bytes=_external_path(s, root).read_bytes() if s.arch in EXTERNAL_ARCHS else None,
        num_outputs=segmenter.outputs,
    )
    atomic_write_json(root / s.metrics, json_safe(metrics))
    log.info("train-segmenter: mIoU on the real validation images %s; written to %s", metrics["miou_real_val"], out)
    return out


def spec_from_settings(s: SegmenterSettings, root: Path) -> tuple[SegmenterSpec, str | None]:
    """The ``segmenter`` settings as a spec (and the class-map CSV it read, if any)."""
    class_map, class_map_file = read_class_map(s.class_map, root)
    spec = SegmenterSpec(
        channel_order=s.channel_order,
        pixel_range=float(s.pixel_range),
        mean=tuple(s.mean),
        std=tuple(s.std) if s.std is not None else None,
        input_size=s.input_size,
        upsample=s.upsample,
        class_map=class_map,
        average=s.average,
    )
    if class_map is not None and s.arch not in EXTERNAL_ARCHS:
        raise SegmenterError(
            f"segmenter.class_map is for networks exported elsewhere (torchscript, onnx); {s.arch} is trained here on "
            "the dataset's own classes. Set segmenter.class_map: null."
        )
    return spec, class_map_file


def _external_path(s: SegmenterSettings, root: Path) -> Path:
    if not s.weights:
        raise SegmenterError(
            f"segmenter.arch {s.arch} needs the exported network: set segmenter.weights to its file (e.g. "
            f"weights/drn_d_105_cityscapes.{'pt' if s.arch == 'torchscript' else 'onnx'}; docs/evaluation.md)"
        )
    path = Path(s.weights) if Path(s.weights).is_absolute() else root / s.weights
    if not path.is_file():
        raise SegmenterError(f"segmenter.weights points to {path}, which does not exist (segmenter.arch {s.arch})")
    return path


def _package_external(
    s: SegmenterSettings, spec: SegmenterSpec, num_classes: int, hw, root: Path, device
) -> tuple[Segmenter, dict]:
    """Load, probe and check an exported network; -> (segmenter, facts to record)."""
    if s.steps:
        raise SegmenterError(
            f"segmenter.arch {s.arch} packages an exported network and cannot train it: set segmenter.steps: 0"
        )
    path = _external_path(s, root)
    net = load_external(s.arch, path.read_bytes(), device)
    probe_hw = spec.input_size if spec.input_size is not None and spec.upsample == "image" else hw
    zero = spec.normalise(torch.zeros(1, 3, *probe_hw, device=device))
    outputs = probe_outputs(net, probe_hw, zero)
    spec.check(outputs, num_classes, f"the network {path}")
    segmenter = Segmenter(net, s.arch, num_classes, spec=spec, num_outputs=outputs).to(device)
    unreachable = sorted(set(range(num_classes)) - segmenter.reachable())
    log.info(
        "train-segmenter: %s %s: %d outputs; %d dataset classes cannot be predicted and are not scored%s",
        s.arch,
        path,
        outputs,
        len(unreachable),
        f" ({unreachable[:12]}{' ...' if len(unreachable) > 12 else ''})" if unreachable else "",
    )
    return segmenter, {"model_file": str(path), "model_sha256": sha256_file(path), "unreachable_classes": unreachable}


def _continue_settings(s: SegmenterSettings, hw) -> dict:
    return json_safe({**{k: getattr(s, k) for k in CONTINUE_KEYS}, "input_hw": list(hw)})


def _parent_segmenter(s: SegmenterSettings, parent_dir: Path, classes: ClassTable, hw) -> dict | None:
    """The segmenter the parent model was scored with (``<train.parent_dir>/segmenter.pt``, fetched by
    resolve-parent), when ``segmenter.continue_steps`` > 0, it was trained with the same settings
    (:data:`CONTINUE_KEYS`, the input size) and its classes begin today's class table; else None
    (trained from scratch, the reason logged)."""
    path = parent_dir / SEGMENTER_FILE
    if s.continue_steps == 0 or not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    old = ClassTable.from_dict(payload["classes"], str(path)) if payload.get("classes") else None
    old_names = list(old.names) if old is not None else []
    why = None
    if payload.get("settings") != _continue_settings(s, hw):
        why = "its settings differ from today's segmenter settings"
    elif not old_names or old_names != list(classes.names[: len(old_names)]) or "state_dict" not in payload:
        why = "its classes do not begin today's class table"
    if why:
        log.info("train-segmenter: not continuing the parent's segmenter %s (%s): from scratch", path, why)
        return None
    return {"path": path, "sha256": sha256_file(path), "state_dict": payload["state_dict"], "classes": len(old_names)}


def _train(s: SegmenterSettings, spec, num_classes: int, hw, ignore, seed: int, data_root, root, device, parent=None):
    """Train (or fine-tune) a network of ``segmenter.arch`` on the real training images; with
    ``parent`` (:func:`_parent_segmenter`), continue it for ``segmenter.continue_steps`` steps, its
    classifier grown to today's classes (the old classes' rows kept, new rows freshly initialised)."""
    torch.manual_seed(seed)  # initial weights (and a new head) depend on the seed only
    if parent is not None:
        net = build_network(s.arch, num_classes, s.width)
        fresh = grow_into(net, parent["state_dict"], parent["classes"], num_classes)
        s = s.model_copy(update={"steps": s.continue_steps})
        log.info(
            "train-segmenter: continuing the parent's segmenter %s (%d -> %d classes)",
            parent["path"],
            parent["classes"],
            num_classes,
        )
    else:
        net, fresh = initial_network(s, num_classes, root)
    net.to(device)
    train_set = _split(data_root, "train", required=s.steps > 0)
    train_hw = spec.input_size if spec.input_size is not None and spec.upsample == "image" else hw
    log.info(
        "train-segmenter: %s for %d steps on %d training images at %dx%d on %s",
        s.arch,
        s.steps,
        len(train_set),
        *train_hw,
        device,
    )
    losses = fit(net, train_set, s, train_hw, ignore, seed, device, spec) if s.steps > 0 else []
    segmenter = Segmenter(net.eval(), s.arch, num_classes, spec=spec, device=device)
    segmenter.meta["fresh_head_keys"] = len(fresh)
    return segmenter, losses


def _split(data_root: Path, split: str, required: bool) -> PreparedDataset | list:
    if split_size(data_root, split):
        return PreparedDataset(data_root, split, load_instances=False)
    if required:
        raise SegmenterError(
            f"{data_root}: the {split} split is empty; the segmenter trains on the real training images"
        )
    return []
