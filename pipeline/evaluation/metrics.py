"""FID and KID from feature matrices (torchmetrics), and segmentation scores from a confusion matrix.

FID/KID: features are extracted once per image by a :class:`~pipeline.evaluation.features.FeatureBackbone`
and handed to torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` through a
pass-through feature module. The statistics and distances are torchmetrics' own code; extracting
only once lets FID and KID share the (slow) Inception pass and lets the real-image features be
cached between evaluations.

Segmentation: a dataset-level confusion matrix (torchmetrics ``MulticlassConfusionMatrix``,
rows = ground truth, columns = prediction) accumulated over the whole split, never per-image
means. Pixels whose ground truth is 255 (dontcare) or one of the ``ignore`` classes are dropped.
Per-class IoU = diag / (row + col - diag); a class absent from both ground truth and prediction
has no IoU (NaN) and is left out of the mean (the DRN ``nanmean`` convention); ignored classes are
never in the mean. Pixel accuracy = diag.sum() / matrix.sum().
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gaugan.classes import DONTCARE
from pipeline.errors import EvaluationError


class _Passthrough(nn.Module):
    """The "feature extractor" torchmetrics sees: features are already extracted."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _as_features(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).float()
    if t.dim() != 2:
        raise ValueError(f"{name} features must be [N, D], got shape {tuple(t.shape)}")
    return t


def compute_fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (torchmetrics), clamped at 0."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _as_features(real, "real"), _as_features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]}, fake {fake.shape[1]}")
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(real)} real and {len(fake)} generated")
    metric = FrechetInceptionDistance(feature=_Passthrough(real.shape[1]))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    # Equal distributions give tiny negative values from the eigenvalue route; FID is >= 0.
    return max(float(metric.compute()), 0.0)


def compute_kid(
    real: torch.Tensor, fake: torch.Tensor, subset_size: int = 1000, subsets: int = 100, seed: int = 0
) -> tuple[float, float, int]:
    """KID mean and std over random subsets (torchmetrics), reproducible for a given seed.

    The subset size is capped at the smaller set's size; the size used is returned third. With
    the subset size equal to both set sizes every subset is the whole set, so the value is exact.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _as_features(real, "real"), _as_features(fake, "fake")
    n = min(len(real), len(fake))
    if n < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(real)} real and {len(fake)} generated")
    size = min(subset_size, n)
    with warnings.catch_warnings():  # "will save all extracted features in buffer": that is the point here
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Passthrough(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size


# --------------------------------------------------------------------------------------------
# segmentation


@dataclass
class SegmentationScores:
    miou: float
    accuracy: float
    iou: np.ndarray  # [num_classes], NaN where a class is absent from GT and prediction, or ignored
    confusion: np.ndarray  # [num_classes, num_classes] int64, rows = ground truth
    num_pixels: int

    def as_dict(self, prefix: str = "", suffix: str = "") -> dict:
        return {f"{prefix}miou{suffix}": self.miou, f"{prefix}accuracy{suffix}": self.accuracy}


def scores_from_confusion(confusion: np.ndarray, ignore: Sequence[int] = ()) -> SegmentationScores:
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    total = int(cm.sum())
    if total == 0:
        raise EvaluationError(
            "no scored pixels: every ground-truth pixel is dontcare or an ignored class (evaluate.ignore_classes)"
        )
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    for c in ignore:
        if 0 <= c < len(iou):
            iou[c] = np.nan
    valid = ~np.isnan(iou)
    miou = float(iou[valid].mean()) if valid.any() else float("nan")
    return SegmentationScores(miou=miou, accuracy=float(tp.sum() / total), iou=iou, confusion=cm, num_pixels=total)


class ConfusionAccumulator:
    """Dataset-level confusion matrix over ``num_classes`` classes (torchmetrics).

    ``update(pred, target)`` takes integer maps ``[B,H,W]`` (or ``[H,W]``) of equal shape. Target
    pixels equal to 255 or in ``ignore`` are not counted.
    """

    def __init__(self, num_classes: int, ignore: Sequence[int] = ()):
        from torchmetrics.classification import MulticlassConfusionMatrix

        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore = tuple(int(c) for c in ignore)
        self._metric = MulticlassConfusionMatrix(num_classes=num_classes, ignore_index=DONTCARE, validate_args=False)
        self.updates = 0

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        pred = torch.as_tensor(np.asarray(pred) if isinstance(pred, np.ndarray) else pred).long().cpu()
        target = torch.as_tensor(np.asarray(target) if isinstance(target, np.ndarray) else target).long().cpu()
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
        target = target.clone()
        keep = target != DONTCARE
        bad = keep & ((target < 0) | (target >= self.num_classes))
        if bad.any():
            raise EvaluationError(
                f"label values {sorted(set(target[bad].unique().tolist()))[:10]} are outside 0..{self.num_classes - 1} "
                f"and are not the dontcare value {DONTCARE}"
            )
        if (pred < 0).any() or (pred >= self.num_classes).any():
            raise ValueError(f"predicted class outside 0..{self.num_classes - 1}")
        for c in self.ignore:
            target[target == c] = DONTCARE
        self._metric.update(pred.reshape(-1), target.reshape(-1))
        self.updates += 1

    @property
    def matrix(self) -> np.ndarray:
        return self._metric.compute().cpu().numpy().astype(np.int64)

    def scores(self) -> SegmentationScores:
        return scores_from_confusion(self.matrix, self.ignore)
