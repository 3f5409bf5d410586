"""The segmenter that scores images, and its file (``segmenter.out``, written by the train-segmenter stage).

The file is a plain dict saved with ``torch.save`` and read back with ``weights_only=True``: format
tag, arch, number of classes, width, state dict, input size, the dataset's class table and
``dataset_id``, the ignored classes, and the training metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gaugan.classes import ClassTable
from gaugan.transforms import resize_image, resize_map
from pipeline.errors import MissingInputError, SegmenterError
from pipeline.evaluation.metrics import ConfusionAccumulator, SegmentationScores
from pipeline.evaluation.segmentation_nets import MEAN, STD, build_network
from pipeline.io import atomic_path

FORMAT = "gaugan-segmenter"
FORMAT_VERSION = 1


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) images [B,3,H,W] -> the segmenter's input (ImageNet mean/std)."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


@dataclass
class Segmenter:
    net: nn.Module
    arch: str
    num_classes: int
    meta: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def classes(self) -> ClassTable | None:
        """The class table of the dataset it was trained on (None in files without one)."""
        table = self.meta.get("classes")
        return ClassTable.from_dict(table, "the segmenter file's class table") if table else None

    def to(self, device: torch.device | str) -> Segmenter:
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    @torch.no_grad()
    def predict(self, images_uint8: torch.Tensor | np.ndarray, batch_size: int = 16) -> torch.Tensor:
        """uint8 images ``[B,H,W,3]`` (or ``[B,3,H,W]``) -> class indices ``[B,H,W]`` (int64, CPU)."""
        x = torch.as_tensor(images_uint8)
        if x.dtype != torch.uint8:
            raise TypeError(f"the segmenter takes uint8 images, got {x.dtype}")
        if x.dim() != 4:
            raise ValueError(f"expected a batch of images [B,H,W,3], got shape {tuple(x.shape)}")
        if x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
        self.net.eval()
        out = []
        use_amp = self.device.type == "cuda"
        for start in range(0, len(x), batch_size):
            chunk = normalise(x[start : start + batch_size].to(self.device))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = self.net(chunk)
            out.append(logits.float().argmax(1).cpu())
        return torch.cat(out) if out else torch.zeros((0, *x.shape[-2:]), dtype=torch.long)


def save_segmenter(path: Path, net: nn.Module, arch: str, num_classes: int, width: int, meta: dict) -> Path:
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "num_classes": int(num_classes),
        "width": int(width),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **meta,
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_segmenter(path: Path | str, device: torch.device | str = "cpu") -> Segmenter:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(
            f"{path}: no segmenter; run the train-segmenter stage first (gaugan-pipeline train-segmenter)"
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise SegmenterError(f"{path}: not a segmenter file written by train-segmenter")
    net = build_network(obj["arch"], obj["num_classes"], obj.get("width", 32))
    net.load_state_dict(obj["state_dict"])
    net.eval()
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    return Segmenter(net, obj["arch"], int(obj["num_classes"]), meta).to(device)


def score_on_split(
    segmenter: Segmenter,
    dataset,
    hw: tuple[int, int],
    ignore: Sequence[int],
    batch_size: int = 16,
    limit: int | None = None,
) -> SegmentationScores | None:
    """Confusion-matrix scores of ``segmenter`` on the real images of a split (the mIoU ceiling)."""
    acc = ConfusionAccumulator(segmenter.num_classes, ignore)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        images = np.stack([resize_image(it["image"], hw) for it in items])
        labels = np.stack([resize_map(it["label"], hw) for it in items])
        acc.update(segmenter.predict(images, batch_size), labels)
    return acc.scores() if acc.updates else None
