"""One pass over the validation split: synthesize, extract FID/KID features, segment, keep samples.

Per batch of label maps: the generator's images; their features (and the real images' features,
unless cached); the segmenter's predictions on generated, real and random-noise images,
accumulated into three dataset-level confusion matrices (generated, ceiling, floor); and the first
``evaluate.num_samples`` rows for the sample grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from gaugan.transforms import resize_image, resize_map
from pipeline.errors import EvaluationError
from pipeline.evaluation.features import RealFeatureCache
from pipeline.evaluation.inputs import EvaluationInputs
from pipeline.evaluation.metrics import ConfusionAccumulator, SegmentationScores
from pipeline.logs import Progress
from pipeline.params import EvaluateSettings


@dataclass
class SplitScores:
    fake_features: torch.Tensor
    real_features: torch.Tensor
    real_features_cached: bool
    generated: SegmentationScores  # the segmenter on generated images
    real: SegmentationScores  # on the real images: the ceiling
    random: SegmentationScores  # on uniform noise: the floor
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # labels, fakes, reals of the grid


def _batch(items: list[dict], hw: tuple[int, int], use_instance: bool):
    """Validation samples at the evaluation size: label maps, real images, instance maps (or None)."""
    labels = np.stack([resize_map(it["label"], hw) for it in items])
    reals = np.stack([resize_image(it["image"], hw) for it in items])
    instances = None
    if use_instance:
        if any(it.get("instance") is None for it in items):
            raise EvaluationError("the generator uses instance maps but some validation samples have none")
        instances = np.stack([resize_map(it["instance"], hw) for it in items])
    return labels, reals, instances


def score_split(inputs: EvaluationInputs, e: EvaluateSettings, seed: int, cache: RealFeatureCache) -> SplitScores:
    n, bs, hw, synth = inputs.num_images, e.batch_size, inputs.hw, inputs.synth
    cached_real = cache.load([str(i) for i in inputs.val.ids[:n]])
    accs = [ConfusionAccumulator(inputs.classes.label_nc, inputs.ignore) for _ in range(3)]
    fake_feats, real_feats = [], []
    kept: dict[str, list[np.ndarray]] = {"labels": [], "fakes": [], "reals": []}
    noise_gen = torch.Generator().manual_seed(seed + 12345)
    use_real_style = synth.config.use_vae and e.vae_style == "real"
    with Progress(n, "evaluate", every=max(bs, n // 10), unit="img") as progress:
        for start in range(0, n, bs):
            items = [inputs.val[i] for i in range(start, min(n, start + bs))]
            labels, reals, instances = _batch(items, hw, synth.config.use_instance)
            style = torch.from_numpy(reals).permute(0, 3, 1, 2).float() / 127.5 - 1.0 if use_real_style else None
            fakes = synth.synthesize(labels, instances, style_images=style, seed=seed + start, batch_size=bs)
            fake_feats.append(inputs.backbone.extract(torch.from_numpy(fakes), inputs.device))
            if cached_real is None:
                real_feats.append(inputs.backbone.extract(torch.from_numpy(reals), inputs.device))
            noise = torch.randint(0, 256, reals.shape, generator=noise_gen, dtype=torch.uint8)
            for acc, images in zip(accs, (fakes, reals, noise), strict=True):
                acc.update(inputs.segmenter.predict(images, bs), labels)
            _keep(kept, e.num_samples, labels=labels, fakes=fakes, reals=reals)
            progress.update(len(items))
    real = cached_real if cached_real is not None else torch.cat(real_feats)
    if cached_real is None:
        cache.save([str(i) for i in inputs.val.ids[:n]], real)
    return SplitScores(
        fake_features=torch.cat(fake_feats),
        real_features=real,
        real_features_cached=cached_real is not None,
        generated=accs[0].scores(),
        real=accs[1].scores(),
        random=accs[2].scores(),
        samples={k: np.concatenate(v) for k, v in kept.items()},
    )


def _keep(kept: dict[str, list], limit: int, **arrays: np.ndarray) -> None:
    room = limit - sum(len(x) for x in kept["labels"])
    if room > 0:
        for key, value in arrays.items():
            kept[key].append(value[:room])
