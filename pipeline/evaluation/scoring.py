"""One pass over the validation split: synthesize, extract FID/KID features, segment, keep samples.

Per batch of label maps: the generator's images (style noise seeded per image from (seed, image
index), so nothing depends on ``evaluate.batch_size``); their features (and the real images',
unless cached); the segmenter's predictions on generated, real and random-noise images,
accumulated into three dataset-level confusion matrices (generated, ceiling, floor) against the
original label maps resized nearest to the scoring size; and the first ``evaluate.num_samples``
rows for the sample grid. The seconds spent in each part are recorded (``timings``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gaugan.classes import DONTCARE
from gaugan.transforms import resize_image, resize_map
from pipeline.errors import EvaluationError
from pipeline.evaluation.features import RealFeatureCache, resize_identity
from pipeline.evaluation.inputs import EvaluationInputs
from pipeline.evaluation.metrics import ConfusionAccumulator, SegmentationScores
from pipeline.evaluation.segmenter_spec import scoring_size
from pipeline.logs import Progress
from pipeline.params import EvaluateSettings


class Stopwatch:
    """Seconds per named part, summed over the pass (CUDA work is waited for before each reading)."""

    def __init__(self, device: torch.device):
        self.seconds: dict[str, float] = defaultdict(float)
        self.cuda = device.type == "cuda"

    @contextmanager
    def part(self, name: str):
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - start


@dataclass
class SplitScores:
    fake_features: torch.Tensor
    real_features: torch.Tensor
    real_features_cached: bool
    generated: SegmentationScores  # the segmenter on generated images
    real: SegmentationScores | None  # on the real images: the ceiling (None: a pass without it)
    random: SegmentationScores | None  # on uniform noise: the floor (None: a pass without it)
    per_image: dict[str, np.ndarray] = field(default_factory=dict)  # generated images' counts (ConfusionAccumulator)
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # labels, fakes, reals of the grid
    unlabelled_maps: int = 0  # validation label maps without a labelled pixel
    diversity: float | None = None  # mean pairwise LPIPS of samples of the same map
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Batch:
    labels: np.ndarray  # at the generated size: the generator's input
    reals: np.ndarray
    instances: np.ndarray | None
    truth: np.ndarray  # the original label maps resized nearest to the scoring size


def _batch(items: list[dict], hw: tuple[int, int], score_hw: tuple[int, int], use_instance: bool) -> _Batch:
    """Validation samples at the evaluation size: label maps, real images, instance maps (or None), truth."""
    labels = np.stack([resize_map(it["label"], hw) for it in items])
    reals = np.stack([resize_image(it["image"], hw) for it in items])
    truth = labels if tuple(score_hw) == tuple(hw) else np.stack([resize_map(it["label"], score_hw) for it in items])
    instances = None
    if use_instance:
        if any(it.get("instance") is None for it in items):
            raise EvaluationError("the generator uses instance maps but some validation samples have none")
        instances = np.stack([resize_map(it["instance"], hw) for it in items])
    return _Batch(labels, reals, instances, truth)


def real_feature_cache(inputs: EvaluationInputs, e: EvaluateSettings, root: Path) -> RealFeatureCache:
    """The cache of the validation split's real-image features (``evaluate.stats_cache``), keyed by all
    that makes them: the split (not the training data), the backbone and where it runs, size, count, resize."""
    key = {
        "split": inputs.split_id,
        "backbone": inputs.backbone.key,
        "hw": list(inputs.hw),
        "n": inputs.num_images,
        "resize": resize_identity(),  # real images are resized before their features: a new resize, new features
    }
    return RealFeatureCache(root / e.stats_cache if e.stats_cache else None, key)


def score_split(
    inputs: EvaluationInputs, e: EvaluateSettings, seed: int, cache: RealFeatureCache, bounds: bool = True
) -> SplitScores:
    """The pass; ``bounds`` False leaves out what only describes the scorer (the segmenter on real images
    and on noise, LPIPS diversity): what scoring another generator on the same terms needs."""
    n, bs, hw, synth = inputs.num_images, e.batch_size, inputs.hw, inputs.synth
    clock = Stopwatch(inputs.device)
    with clock.part("real_features_cache"):
        cached_real = cache.load([str(i) for i in inputs.val.ids[:n]])
    seg = inputs.segmenter
    accs = [
        ConfusionAccumulator(inputs.classes.label_nc, inputs.ignore, seg.spec.average, per_image=k == 0)
        for k in range(3 if bounds else 1)
    ]
    fake_feats, real_feats = [], []
    kept: dict[str, list[np.ndarray]] = {"labels": [], "fakes": [], "reals": []}
    noise_gen = torch.Generator().manual_seed(seed + 12345)
    use_real_style = synth.config.use_vae and e.vae_style == "real"
    score_hw, unlabelled = scoring_size(seg.spec, hw), 0
    with Progress(n, "evaluate", every=max(bs, n // 10), unit="img") as progress:
        for start in range(0, n, bs):
            with clock.part("load"):
                items = [inputs.val[i] for i in range(start, min(n, start + bs))]
                b = _batch(items, hw, score_hw, synth.config.use_instance)
                unlabelled += int(sum(not (t != DONTCARE).any() for t in b.truth))
            style = torch.from_numpy(b.reals).permute(0, 3, 1, 2).float() / 127.5 - 1.0 if use_real_style else None
            with clock.part("synthesis"):  # image k of this call is image start + k: its noise seed is seed + start + k
                fakes = synth.synthesize(b.labels, b.instances, style_images=style, seed=seed + start, batch_size=bs)
            with clock.part("features"):
                fake_feats.append(inputs.backbone.extract(torch.from_numpy(fakes), inputs.device))
                if cached_real is None:
                    real_feats.append(inputs.backbone.extract(torch.from_numpy(b.reals), inputs.device))
            noise = torch.randint(0, 256, b.reals.shape, generator=noise_gen, dtype=torch.uint8)
            with clock.part("segmentation"):
                batches: tuple[np.ndarray | torch.Tensor, ...] = (fakes, b.reals, noise)
                for acc, images in zip(accs, batches[: len(accs)], strict=True):
                    acc.update(seg.predict(images, bs), b.truth)
            _keep(kept, e.num_samples, labels=b.labels, fakes=fakes, reals=b.reals)
            progress.update(len(items))
    real = cached_real if cached_real is not None else torch.cat(real_feats)
    if cached_real is None:
        cache.save([str(i) for i in inputs.val.ids[:n]], real)
    return SplitScores(
        fake_features=torch.cat(fake_feats),
        real_features=real,
        real_features_cached=cached_real is not None,
        generated=accs[0].scores(),
        real=accs[1].scores() if bounds else None,
        random=accs[2].scores() if bounds else None,
        per_image=accs[0].per_image_counts(),
        samples={k: np.concatenate(v) for k, v in kept.items()},
        unlabelled_maps=unlabelled,
        diversity=_diversity(inputs, e, seed, clock) if bounds else None,
        timings=dict(clock.seconds),
    )


def _diversity(inputs: EvaluationInputs, e: EvaluateSettings, seed: int, clock: Stopwatch) -> float | None:
    """Mean pairwise LPIPS over ``evaluate.diversity_samples`` draws of the first maps (None when off)."""
    if inputs.diversity is None:
        return None
    m = min(e.diversity_maps, inputs.num_images)
    with clock.part("diversity"):
        items = [inputs.val[i] for i in range(m)]
        b = _batch(items, inputs.hw, inputs.hw, inputs.synth.config.use_instance)
        return inputs.diversity.score(inputs.synth, b.labels, b.instances, e.diversity_samples, seed)


def _keep(kept: dict[str, list], limit: int, **arrays: np.ndarray) -> None:
    room = limit - sum(len(x) for x in kept["labels"])
    if room > 0:
        for key, value in arrays.items():
            kept[key].append(value[:room])
