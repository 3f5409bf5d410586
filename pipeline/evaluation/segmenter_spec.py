"""How images go into a segmentation network and how its outputs become the dataset's classes.

A :class:`SegmenterSpec` travels inside the segmenter file (written by train-segmenter from the
``segmenter`` section of ``params.yaml``), so evaluate scores with exactly the preprocessing the
network was trained or exported with:

- channel order (``rgb`` | ``bgr``), pixel range (``1.0``: pixels / 255, ``255.0``: raw values),
  per-channel ``mean`` and ``std`` (``None``: mean subtraction only), both in the network's
  channel order and pixel range;
- the scoring resolution: ``input_size`` (``None``: the generated size) and, when set, whether the
  image is resized to it before segmentation (``upsample: image``) or the logits after
  (``upsample: prediction``); ground truth is resized nearest to the scoring size from the
  original label map;
- ``class_map``: network output id -> dataset class id (``None``: the same ids). Outputs without a
  dataset class are counted as wrong predictions; dataset classes no output maps to cannot be
  predicted and are left out of the scores (e.g. Cityscapes' label ids outside the 19 train ids);
- ``average``: ``present`` (mean over classes seen in ground truth or prediction: DRN, torchmetrics
  ``macro``) or ``all`` (every scored class, an absent one counting 0: CSAIL's UperNet scorer).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gaugan.classes import DONTCARE
from pipeline.errors import SegmenterError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SegmenterSpec:
    channel_order: str = "rgb"
    pixel_range: float = 1.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    input_size: tuple[int, int] | None = None
    upsample: str = "image"
    class_map: dict[int, int] | None = None
    average: str = "present"

    def __post_init__(self) -> None:
        if self.channel_order not in ("rgb", "bgr"):
            raise SegmenterError(f"segmenter.channel_order must be rgb or bgr, got {self.channel_order!r}")
        if self.upsample not in ("image", "prediction"):
            raise SegmenterError(f"segmenter.upsample must be image or prediction, got {self.upsample!r}")
        if self.average not in ("present", "all"):
            raise SegmenterError(f"segmenter.average must be present or all, got {self.average!r}")
        if len(self.mean) != 3 or (self.std is not None and (len(self.std) != 3 or min(self.std) <= 0)):
            raise SegmenterError(
                "segmenter.mean needs 3 values and segmenter.std 3 positive values or null; "
                f"got {self.mean}, {self.std}"
            )

    # ------------------------------------------------------------------ file form
    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_map"] = [[k, v] for k, v in sorted(self.class_map.items())] if self.class_map is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping | None) -> SegmenterSpec:
        """The spec stored in a segmenter file; files written before specs existed get ImageNet RGB."""
        if not d:
            return cls()
        cmap = d.get("class_map")
        return cls(
            channel_order=d["channel_order"],
            pixel_range=float(d["pixel_range"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]) if d.get("std") is not None else None,
            input_size=(int(d["input_size"][0]), int(d["input_size"][1])) if d.get("input_size") else None,
            upsample=d["upsample"],
            class_map={int(k): int(v) for k, v in cmap} if cmap is not None else None,
            average=d["average"],
        )

    # ------------------------------------------------------------------ input
    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0..255 float) RGB images ``[B,3,H,W]`` -> the network's float input."""
        x = images.float()
        if self.channel_order == "bgr":
            x = x.flip(1)
        x = x * (self.pixel_range / 255.0)
        x = x - torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        if self.std is not None:
            x = x / torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return x

    # ------------------------------------------------------------------ output
    def lookup(self, num_outputs: int, num_classes: int) -> torch.Tensor:
        """int64 ``[num_outputs]``: the dataset class of each output id, ``num_classes`` for none."""
        table = torch.full((num_outputs,), num_classes, dtype=torch.long)
        if self.class_map is None:
            ids = torch.arange(min(num_outputs, num_classes))
            table[ids] = ids
            return table
        for model_id, data_id in self.class_map.items():
            if model_id < num_outputs and data_id != DONTCARE:
                table[model_id] = data_id
        return table

    def reachable(self, num_outputs: int, num_classes: int) -> set[int]:
        """Dataset classes some output maps to: the only ones the network can score."""
        return {int(c) for c in self.lookup(num_outputs, num_classes).tolist() if c < num_classes}

    def check(self, num_outputs: int, num_classes: int, source: str) -> None:
        """Refuse a class map that names outputs the network lacks or classes the dataset lacks."""
        if self.class_map is None:
            if num_outputs < num_classes:
                raise SegmenterError(
                    f"{source} predicts {num_outputs} classes and the dataset has {num_classes}; without "
                    "segmenter.class_map output id i is dataset class i, so give a class map (model id -> dataset id)"
                )
            return
        bad_out = sorted(k for k in self.class_map if not 0 <= k < num_outputs)
        bad_cls = sorted(v for v in self.class_map.values() if not (0 <= v < num_classes or v == DONTCARE))
        if bad_out or bad_cls:
            raise SegmenterError(
                f"segmenter.class_map does not fit {source}: output ids {bad_out[:8]} are not among its "
                f"{num_outputs} outputs; dataset ids {bad_cls[:8]} are not among the dataset's {num_classes} "
                f"classes (0..{num_classes - 1}, or {DONTCARE} for none)"
            )


def read_class_map(value: Mapping | str | None, root: Path) -> tuple[dict[int, int] | None, str | None]:
    """``segmenter.class_map`` -> (``{model id: dataset id}`` or None, the CSV file it came from or None).

    A CSV file has one ``model_id,dataset_id`` row per output (a header row and ``#`` lines skipped).
    """
    if value is None:
        return None, None
    if isinstance(value, Mapping):
        return {int(k): int(v) for k, v in value.items()}, None
    path = Path(value) if Path(value).is_absolute() else Path(root) / value
    if not path.is_file():
        raise SegmenterError(
            f"segmenter.class_map points to {path}, which does not exist: give a CSV file of "
            "model_id,dataset_id rows, an inline mapping {model_id: dataset_id}, or null (the same ids)"
        )
    mapping: dict[int, int] = {}
    with path.open(newline="") as fh:
        for n, row in enumerate(csv.reader(fh), 1):
            if not row or row[0].strip().startswith("#") or (n == 1 and not row[0].strip().lstrip("-").isdigit()):
                continue
            try:
                model_id, data_id = int(row[0]), int(row[1])
            except (ValueError, IndexError):
                raise SegmenterError(f"{path}:{n}: expected model_id,dataset_id, got {row}") from None
            if model_id in mapping:
                raise SegmenterError(f"{path}:{n}: model id {model_id} is mapped twice")
            mapping[model_id] = data_id
    if not mapping:
        raise SegmenterError(f"{path}: no model_id,dataset_id rows")
    return mapping, str(path)


def scoring_size(spec: SegmenterSpec, generated_hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W) at which predictions and ground truth are compared."""
    return spec.input_size if spec.input_size is not None else (int(generated_hw[0]), int(generated_hw[1]))
