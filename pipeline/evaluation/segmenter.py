"""The segmenter that scores images, and its file (``segmenter.out``, written by the train-segmenter stage).

The file is a plain dict saved with ``torch.save`` and read back with ``weights_only=True``: format
tag, arch, number of dataset classes and of network outputs, the :class:`SegmenterSpec`
(preprocessing, scoring size, class map, averaging), the network (a state dict for the archs
trained here; the exported file's bytes for ``torchscript``/``onnx``), the dataset's class table
and ``dataset_id``, the ignored classes and the training metrics.

A segmenter's identity (:attr:`Segmenter.scorer_id`) is a hash of what decides its predictions:
arch, spec, class count and weights; two files that score the same way have the same id, whatever
else they record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gaugan.classes import ClassTable
from gaugan.transforms import resize_image, resize_map
from pipeline.errors import MissingInputError, SegmenterError
from pipeline.evaluation.external_segmenters import EXTERNAL_ARCHS, load_external, logits_of
from pipeline.evaluation.metrics import ConfusionAccumulator, SegmentationScores
from pipeline.evaluation.segmentation_nets import build_network
from pipeline.evaluation.segmenter_spec import SegmenterSpec, scoring_size
from pipeline.io import atomic_path

FORMAT = "gaugan-segmenter"
FORMAT_VERSION = 2
PIXELS_PER_CHUNK = 1 << 22  # images per forward pass are capped so that a chunk holds about 4 M pixels


@dataclass
class Segmenter:
    net: nn.Module
    arch: str
    num_classes: int  # the dataset's classes; predictions are dataset ids, num_classes for "no dataset class"
    meta: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    spec: SegmenterSpec = field(default_factory=SegmenterSpec)
    num_outputs: int | None = None  # the network's output channels (None: num_classes)
    scorer_id: str = ""

    @property
    def classes(self) -> ClassTable | None:
        """The class table of the dataset it was trained on (None in files without one)."""
        table = self.meta.get("classes")
        return ClassTable.from_dict(table, "the segmenter file's class table") if table else None

    @property
    def outputs(self) -> int:
        return self.num_outputs if self.num_outputs is not None else self.num_classes

    def reachable(self) -> set[int]:
        """Dataset classes the network can predict (through the class map)."""
        return self.spec.reachable(self.outputs, self.num_classes)

    def to(self, device: torch.device | str) -> Segmenter:
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,H,W] -> the network's input, resized to ``spec.input_size`` when it upsamples images."""
        size = self.spec.input_size
        if size is not None and self.spec.upsample == "image" and tuple(images.shape[-2:]) != size:
            hwc = images.permute(0, 2, 3, 1).cpu().numpy()
            images = torch.from_numpy(np.stack([resize_image(im, size) for im in hwc])).permute(0, 3, 1, 2)
        return self.spec.normalise(images.to(self.device))

    @torch.no_grad()
    def predict(self, images_uint8: torch.Tensor | np.ndarray, batch_size: int = 16) -> torch.Tensor:
        """uint8 images ``[B,H,W,3]`` (or ``[B,3,H,W]``) -> dataset class ids ``[B,h,w]`` (int64, CPU).

        ``(h, w)`` is the scoring size (:func:`scoring_size`); an output id without a dataset class
        becomes ``num_classes``. Runs in float32 (no autocast): scores do not depend on the device's
        reduced-precision modes.
        """
        x = torch.as_tensor(images_uint8)
        if x.dtype != torch.uint8:
            raise TypeError(f"the segmenter takes uint8 images, got {x.dtype}")
        if x.dim() != 4:
            raise ValueError(f"expected a batch of images [B,H,W,3], got shape {tuple(x.shape)}")
        if x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
        target = scoring_size(self.spec, (int(x.shape[-2]), int(x.shape[-1])))
        lookup = self.spec.lookup(self.outputs, self.num_classes)
        chunk = max(1, min(batch_size, PIXELS_PER_CHUNK // (target[0] * target[1])))
        self.net.eval()
        out = []
        for start in range(0, len(x), chunk):
            logits = logits_of(self.net(self._input(x[start : start + chunk]))).float()
            if logits.shape[1] != self.outputs:
                raise SegmenterError(f"the segmenter returned {logits.shape[1]} classes; its file says {self.outputs}")
            if tuple(logits.shape[-2:]) != target:
                logits = F.interpolate(logits, size=target, mode="bilinear", align_corners=False)
            out.append(lookup[logits.argmax(1).cpu()])
        return torch.cat(out) if out else torch.zeros((0, *target), dtype=torch.long)


# ------------------------------------------------------------------------------------------------
# the file


def save_segmenter(
    path: Path,
    net: nn.Module | None,
    arch: str,
    num_classes: int,
    width: int,
    meta: dict,
    spec: SegmenterSpec | None = None,
    model_bytes: bytes | None = None,
    num_outputs: int | None = None,
) -> Path:
    """A trained network (``net``) or an exported one (``model_bytes``, for torchscript/onnx)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "num_classes": int(num_classes),
        "num_outputs": int(num_outputs if num_outputs is not None else num_classes),
        "width": int(width),
        "spec": (spec or SegmenterSpec()).to_dict(),
        **meta,
    }
    if model_bytes is not None:
        payload["model_bytes"] = torch.frombuffer(bytearray(model_bytes), dtype=torch.uint8)
    else:
        assert net is not None, "a trained segmenter needs its network"
        payload["state_dict"] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def scorer_id(arch: str, spec: SegmenterSpec, num_classes: int, weights: dict | bytes) -> str:
    """16 hex digits over what decides the predictions (not the training log or the file's other keys)."""
    h = hashlib.sha256(json.dumps([arch, spec.to_dict(), num_classes], sort_keys=True).encode())
    if isinstance(weights, bytes):
        h.update(weights)
    else:
        for name, tensor in sorted(weights.items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def load_segmenter(path: Path | str, device: torch.device | str = "cpu") -> Segmenter:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(
            f"{path}: no segmenter; run the train-segmenter stage first (gaugan-pipeline train-segmenter)"
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise SegmenterError(f"{path}: not a segmenter file written by train-segmenter")
    spec = SegmenterSpec.from_dict(obj.get("spec"))
    arch, num_classes = obj["arch"], int(obj["num_classes"])
    weights: dict | bytes
    if arch in EXTERNAL_ARCHS:
        model_bytes = obj["model_bytes"].numpy().tobytes()
        net, weights = load_external(arch, model_bytes, device), model_bytes
    else:
        state = obj["state_dict"]
        net, weights = build_network(arch, num_classes, obj.get("width", 32)), state
        net.load_state_dict(state)
    meta = {k: v for k, v in obj.items() if k not in ("state_dict", "model_bytes")}
    segmenter = Segmenter(
        net.eval(),
        arch,
        num_classes,
        meta,
        spec=spec,
        num_outputs=int(obj.get("num_outputs", num_classes)),
        scorer_id=scorer_id(arch, spec, num_classes, weights),
    )
    return segmenter.to(device)


def score_on_split(
    segmenter: Segmenter,
    dataset,
    hw: tuple[int, int],
    ignore: Sequence[int],
    batch_size: int = 16,
    limit: int | None = None,
) -> SegmentationScores | None:
    """Confusion-matrix scores of ``segmenter`` on the real images of a split (the mIoU ceiling).

    Images are resized to ``hw`` (the generated size) first, as generated images come; ground truth
    is the original label map resized nearest to the scoring size.
    """
    acc = ConfusionAccumulator(segmenter.num_classes, ignore, average=segmenter.spec.average)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    size = scoring_size(segmenter.spec, hw)
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        images = np.stack([resize_image(it["image"], hw) for it in items])
        labels = np.stack([resize_map(it["label"], size) for it in items])
        acc.update(segmenter.predict(images, batch_size), labels)
    return acc.scores() if acc.updates else None
