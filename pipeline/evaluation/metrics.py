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
has no IoU (NaN) and is left out of the mean (``average="present"``, the DRN ``nanmean``
convention) or counts 0 (``average="all"``, CSAIL's); ignored classes are never in the mean.
Pixel accuracy = diag.sum() / matrix.sum().
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gaugan.classes import DONTCARE
from pipeline.errors import EvaluationError

log = logging.getLogger(__name__)


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
) -> tuple[float, float | None, int]:
    """KID mean and std over random subsets (torchmetrics), reproducible for a given seed.

    The published protocol draws ``subsets`` subsets of ``subset_size`` images (1000 and 100).
    When the smaller set has no more than ``subset_size`` images every subset would be the whole
    set, so the std would be about 0 and say nothing: then KID is computed once on all images (the
    first n of the larger set: the exact unbiased estimate), the std is None and a warning says so.
    The subset size used is returned third.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _as_features(real, "real"), _as_features(fake, "fake")
    n = min(len(real), len(fake))
    if n < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(real)} real and {len(fake)} generated")
    too_small = n <= subset_size
    if too_small:
        log.warning(
            "KID: %d images is no more than evaluate.kid_subset_size (%d): KID is computed once on all of them "
            "and kid_std is null (subsets of the whole set would all be the same; the published protocol "
            "uses subsets of 1000 images)",
            n,
            subset_size,
        )
    if too_small:  # the first n of each set (they are equal in the evaluate stage): no draw at all
        real, fake = real[:n], fake[:n]
    size, count = (n, 1) if too_small else (subset_size, subsets)
    with warnings.catch_warnings():  # "will save all extracted features in buffer": that is the point here
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Passthrough(real.shape[1]), subsets=count, subset_size=size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), None if too_small else float(std), size


# --------------------------------------------------------------------------------------------
# segmentation


@dataclass
class SegmentationScores:
    miou: float
    accuracy: float
    iou: np.ndarray  # [num_classes], NaN where a class is ignored (or, averaging "present", absent)
    confusion: np.ndarray  # [num_classes, num_classes] int64, rows = ground truth, columns = prediction
    num_pixels: int
    unmapped: np.ndarray | None = None  # [num_classes]: pixels predicted as an output with no dataset class
    average: str = "present"


def scores_from_confusion(
    confusion: np.ndarray, ignore: Sequence[int] = (), average: str = "present", unmapped: np.ndarray | None = None
) -> SegmentationScores:
    """Per-class IoU, mIoU and pixel accuracy from a dataset-level confusion matrix.

    ``average``: ``present`` leaves out classes absent from both ground truth and prediction (DRN's
    ``nanmean``, torchmetrics' ``macro``); ``all`` counts every class that is not ignored, an absent
    one as 0 (CSAIL's scorer over ADE20K's 150 classes). ``unmapped[c]``: pixels of ground truth
    ``c`` predicted as a network output with no dataset class; they are errors (in the union and
    the pixel count), never matches.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    extra = np.zeros(len(cm), np.int64) if unmapped is None else np.asarray(unmapped, dtype=np.int64)
    inter, total = np.diag(cm), int(cm.sum() + extra.sum())
    union = cm.sum(axis=0) + cm.sum(axis=1) + extra - inter
    iou, miou, accuracy = scores_from_counts(inter, union, int(inter.sum()), total, ignore, average)
    return SegmentationScores(
        miou=miou,
        accuracy=accuracy,
        iou=iou,
        confusion=cm,
        num_pixels=total,
        unmapped=extra if unmapped is not None else None,
        average=average,
    )


def scores_from_counts(
    inter: np.ndarray,
    union: np.ndarray,
    correct: int,
    labelled: int,
    ignore: Sequence[int] = (),
    average: str = "present",
) -> tuple[np.ndarray, float, float]:
    """(per-class IoU, mIoU, pixel accuracy) from per-class intersection and union pixel counts.

    The one place these numbers are computed: from a split's confusion matrix
    (:func:`scores_from_confusion`) and from per-image counts summed over any selection of images
    (the registry's paired bootstrap, ``pipeline/evaluation/evidence.py``), so both agree exactly.
    """
    if average not in ("present", "all"):
        raise ValueError(f"average must be 'present' or 'all', got {average!r}")
    if labelled == 0:
        raise EvaluationError(
            "no scored pixels: every ground-truth pixel is dontcare or an ignored class (evaluate.ignore_classes)"
        )
    tp, union = np.asarray(inter, dtype=np.float64), np.asarray(union, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), 0.0 if average == "all" else np.nan)
    for c in ignore:
        if 0 <= c < len(iou):
            iou[c] = np.nan
    valid = ~np.isnan(iou)
    miou = float(iou[valid].mean()) if valid.any() else float("nan")
    return iou, miou, float(correct / labelled)


class ConfusionAccumulator:
    """Dataset-level confusion matrix over ``num_classes`` classes (torchmetrics).

    ``update(pred, target)`` takes integer maps ``[B,H,W]`` (or ``[H,W]``) of equal shape. Target
    pixels equal to 255 or in ``ignore`` are not counted. A prediction equal to ``num_classes``
    means "a network output with no dataset class" (see ``SegmenterSpec.class_map``).
    With ``per_image``, each image's counts are kept too (:meth:`per_image_counts`): their sums over
    the images are the split's intersections, unions, correct and labelled pixels.
    """

    def __init__(self, num_classes: int, ignore: Sequence[int] = (), average: str = "present", per_image: bool = False):
        from torchmetrics.classification import MulticlassConfusionMatrix

        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore = tuple(int(c) for c in ignore)
        self.average = average
        # one more class: the column of predictions without a dataset class (no ground truth is ever in it)
        self._metric = MulticlassConfusionMatrix(
            num_classes=num_classes + 1, ignore_index=DONTCARE, validate_args=False
        )
        self.updates = 0
        self.per_image = per_image
        self._counts: list[np.ndarray] = []  # per update: [B, 2 * num_classes + 2] int64

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
        if (pred < 0).any() or (pred > self.num_classes).any():
            raise ValueError(f"predicted class outside 0..{self.num_classes}")
        for c in self.ignore:
            target[target == c] = DONTCARE
        self._metric.update(pred.reshape(-1), target.reshape(-1))
        self.updates += 1
        if self.per_image:
            hw = target.shape[-2:]
            self._counts.append(_image_counts(pred.reshape(-1, *hw), target.reshape(-1, *hw), self.num_classes))

    @property
    def full_matrix(self) -> np.ndarray:
        return self._metric.compute().cpu().numpy().astype(np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """``[num_classes, num_classes]``: rows = ground truth, columns = predicted dataset class."""
        n = self.num_classes
        return self.full_matrix[:n, :n]

    def per_image_counts(self) -> dict[str, np.ndarray]:
        """Per image, in update order: ``inter``, ``union`` ``[N, num_classes]``; ``correct``, ``labelled`` ``[N]``."""
        n = self.num_classes
        counts = np.concatenate(self._counts) if self._counts else np.zeros((0, 2 * n + 2), np.int64)
        return {
            "inter": counts[:, :n],
            "union": counts[:, n : 2 * n],
            "correct": counts[:, 2 * n],
            "labelled": counts[:, 2 * n + 1],
        }

    def scores(self) -> SegmentationScores:
        full, n = self.full_matrix, self.num_classes
        unmapped = full[:n, n] if full[:n, n].any() else None
        return scores_from_confusion(full[:n, :n], self.ignore, self.average, unmapped)


def _image_counts(pred: torch.Tensor, target: torch.Tensor, n: int) -> np.ndarray:
    """``[B, 2n + 2]``: each image's per-class intersection and union, correct and labelled pixels,
    counted as :func:`scores_from_confusion` counts the split (a prediction ``n``: no dataset class)."""
    b, k = len(target), n + 1
    keep = target != DONTCARE
    image = torch.arange(b).view(b, 1, 1).expand_as(target)
    index = (image * k + target) * k + pred
    cm = torch.bincount(index[keep], minlength=b * k * k).view(b, k, k)[:, :n].numpy().astype(np.int64)
    inter = np.diagonal(cm[:, :, :n], axis1=1, axis2=2)
    union = cm[:, :, :n].sum(axis=1) + cm.sum(axis=2) - inter
    return np.concatenate([inter, union, inter.sum(axis=1, keepdims=True), cm.sum(axis=(1, 2))[:, None]], axis=1)
