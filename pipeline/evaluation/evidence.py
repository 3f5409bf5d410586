"""Per-image evidence of an evaluation, and the paired bootstrap that compares two of them.

``<evaluate.out_dir>/per_image.npz`` (written by evaluate; ``register`` logs it with the version as
``evaluation/per_image.npz``) holds, per validation image in split order:

- ``ids`` [N]: sample ids;
- ``fake_features``, ``real_features`` [N, D] float32: the FID backbone's features of the generated
  and of the real image (the very tensors FID and KID were computed from);
- ``inter``, ``union`` [N, C] int64: per class, the pixels where the segmenter's reading of the
  generated image and the ground truth agree, and where either has the class, counted as the split's
  confusion matrix counts them (dontcare and ignored classes dropped, outputs without a dataset class
  in the union);
- ``correct``, ``labelled`` [N] int64: pixels read right, and pixels scored;
- ``meta``: a JSON string: the validation split's id, the FID backbone and the segmenter's id, the
  ignored classes and the averaging, KID's subset settings and seed, resolution and style source.

The split's numbers are functions of these rows: IoU per class = sum inter / sum union over the
images, so :func:`metric_value` on the whole file gives exactly metrics.json's ``fid``,
``kid_mean``, ``miou`` and ``accuracy`` (tested), and on resampled rows gives a bootstrap replicate.
:func:`paired_bootstrap` resamples validation images with the same indices for two models (real
features resampled alike) and returns a percentile interval of the improvement of one over the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import EvaluationError
from pipeline.evaluation.feature_stats import frechet_distance, split_fid
from pipeline.evaluation.metrics import compute_kid, scores_from_counts
from pipeline.io import atomic_path
from pipeline.params import BOOTSTRAP_METRICS

EVIDENCE_FILE = "per_image.npz"
FORMAT = "gaugan-per-image/1"
METRICS = BOOTSTRAP_METRICS  # what the paired bootstrap can compare (register.metric under if_significant)
_ARRAYS = ("ids", "fake_features", "real_features", "inter", "union", "correct", "labelled")


@dataclass(frozen=True)
class Evidence:
    ids: np.ndarray  # [N] str
    fake_features: np.ndarray  # [N, D] float32
    real_features: np.ndarray  # [N, D] float32
    inter: np.ndarray  # [N, C] int64
    union: np.ndarray  # [N, C] int64
    correct: np.ndarray  # [N] int64
    labelled: np.ndarray  # [N] int64
    meta: dict

    def save(self, path: Path) -> Path:
        """Written atomically (compressed: the counts are mostly zeros)."""
        arrays = {k: getattr(self, k) for k in _ARRAYS}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays, meta=np.array(json.dumps({"format": FORMAT, **self.meta})))
        return path

    @classmethod
    def load(cls, path: Path) -> Evidence:
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in _ARRAYS}
                meta = json.loads(str(npz["meta"]))
        except (OSError, KeyError, ValueError) as err:
            raise EvaluationError(f"{path}: not a per-image evidence file ({err}); evaluate again") from None
        if meta.get("format") != FORMAT:
            raise EvaluationError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}; evaluate again")
        return cls(**arrays, meta=meta)

    def __len__(self) -> int:
        return len(self.ids)


def metric_value(ev: Evidence, metric: str) -> float:
    """``metric`` of the whole split from its per-image rows: metrics.json's value, exactly."""
    real, fake = torch.from_numpy(ev.real_features), torch.from_numpy(ev.fake_features)
    if metric == "fid":
        return split_fid(real, fake)[0]
    if metric == "kid_mean":
        kid = ev.meta["kid"]
        return compute_kid(real, fake, kid["subset_size"], kid["subsets"], seed=kid["seed"])[0]
    if metric in ("miou", "accuracy"):
        _, miou, accuracy = scores_from_counts(
            ev.inter.sum(0),
            ev.union.sum(0),
            int(ev.correct.sum()),
            int(ev.labelled.sum()),
            ev.meta["ignore"],
            ev.meta["average"],
        )
        return miou if metric == "miou" else accuracy
    raise EvaluationError(f"no per-image evidence for {metric!r}; it has {', '.join(METRICS)}")


def _replicates(ev: Evidence, metric: str, draws: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """``metric`` on each resample (``draws`` [B, N] image indices); FID's on ``device``."""
    if metric == "fid":
        real, fake = torch.from_numpy(ev.real_features).to(device), torch.from_numpy(ev.fake_features).to(device)
        return np.array([frechet_distance(real[i], fake[i]) for i in torch.from_numpy(draws).to(device)])
    weights = np.stack([np.bincount(d, minlength=len(ev)) for d in draws])  # [B, N]: how often each image is drawn
    if metric == "kid_mean":
        return _kid_replicates(ev, weights)
    inter, union = weights @ ev.inter, weights @ ev.union
    correct, labelled = weights @ ev.correct, weights @ ev.labelled
    ignore, average, index = ev.meta["ignore"], ev.meta["average"], 1 if metric == "miou" else 2
    return np.array(
        [
            scores_from_counts(inter[b], union[b], int(correct[b]), int(labelled[b]), ignore, average)[index]
            for b in range(len(draws))
        ]
    )


def _kid_replicates(ev: Evidence, weights: np.ndarray) -> np.ndarray:
    """The unbiased MMD^2 (KID's polynomial kernel) of each resample, all images at once: with w the draw
    counts, the sum over pairs of distinct draws is w^T K w - w . diag(K)."""
    real, fake = ev.real_features.astype(np.float64), ev.fake_features.astype(np.float64)
    d, m, w = real.shape[1], len(ev), weights.astype(np.float64)

    def within(x: np.ndarray) -> np.ndarray:
        k = (x @ x.T / d + 1) ** 3
        return (((w @ k) * w).sum(1) - w @ np.diag(k)) / (m * (m - 1))

    cross = (((w @ ((fake @ real.T / d + 1) ** 3)) * w).sum(1)) / (m * m)
    return within(real) + within(fake) - 2 * cross


def paired_bootstrap(
    challenger: Evidence,
    champion: Evidence,
    metric: str,
    greater_is_better: bool,
    replicates: int,
    confidence: float,
    seed: int,
    device: torch.device | str = "cpu",
) -> dict:
    """Improvement of ``challenger`` over ``champion`` (positive: better) with a percentile interval.

    Both were scored on the same images in the same order (checked); each replicate draws N image
    indices with replacement and scores both models (and the real features) on those same images.
    """
    if list(challenger.ids) != list(champion.ids):
        raise EvaluationError(
            f"the two evaluations scored different images ({len(challenger)} and {len(champion)}; first ids "
            f"{list(challenger.ids[:3])} and {list(champion.ids[:3])}): a paired comparison needs the same split"
        )
    sign = 1.0 if greater_is_better else -1.0
    mine, theirs = metric_value(challenger, metric), metric_value(champion, metric)
    n = len(challenger)
    draws = np.random.default_rng([int(seed) & 0xFFFFFFFF, 2019]).integers(0, n, (replicates, n))
    diffs = sign * (_replicates(challenger, metric, draws, device) - _replicates(champion, metric, draws, device))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail]) if replicates else (np.nan, np.nan)
    return {
        "challenger": mine,
        "champion": theirs,
        "improvement": sign * (mine - theirs),
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": confidence,
        "replicates": replicates,
        "images": len(challenger),
    }
