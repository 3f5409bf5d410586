"""LPIPS diversity of multimodal models: how different the images of one label map are.

For models with a style encoder (``use_vae``), each of the first ``evaluate.diversity_maps``
validation label maps is synthesized ``evaluate.diversity_samples`` times with different prior
noise (per-image seeds), and the mean LPIPS distance over all pairs of images of the same map is
reported (higher: more diverse), as OASIS and its successors do.

LPIPS (torchmetrics) needs torchvision's ImageNet weights of its backbone in the torch hub cache;
its linear heads ship inside torchmetrics. Nothing is downloaded: without the backbone file the
stage stops before any synthesis and names the file and the setting that turns diversity off.
The weights file's sha256 is recorded, and whether it is torchvision's official file.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pipeline.errors import FeatureWeightsError
from pipeline.io import sha256_file

# torchvision's ImageNet backbone files that torchmetrics' LPIPS loads (the name ends with the
# first 8 hex digits of the file's sha256, torch.hub's convention).
LPIPS_BACKBONES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
SEED_OFFSET = 1_000_003  # diversity draws use other per-image seeds than the FID/KID synthesis


def backbone_file(net: str) -> Path:
    """The backbone weights file LPIPS ``net`` needs; refuses clearly when it is not there."""
    name = LPIPS_BACKBONES[net]
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not path.is_file():
        raise FeatureWeightsError(
            f"LPIPS diversity with evaluate.diversity_net: {net} needs torchvision's ImageNet weights {name} in "
            f"the torch hub cache, {path.parent}/ (set TORCH_HOME to move it), and it is not there; nothing is "
            "downloaded and no stand-in is used. Copy the file there, or set evaluate.diversity_net: null to "
            "evaluate without LPIPS diversity."
        )
    return path


class LpipsDiversity:
    """Mean pairwise LPIPS between samples of the same label map."""

    def __init__(self, net: Literal["alex", "vgg", "squeeze"], device: torch.device):
        path = backbone_file(net)
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self.metric = LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="mean", normalize=True).to(device)
        sha = sha256_file(path)
        self.info = {
            "net": net,
            "backbone_file": str(path),
            "backbone_sha256": sha,
            "official_weights": sha.startswith(LPIPS_BACKBONES[net].rsplit("-", 1)[1].split(".")[0]),
        }
        self.device = device

    @torch.no_grad()
    def score(self, synth, labels: np.ndarray, instances: np.ndarray | None, samples: int, seed: int) -> float:
        """``labels`` ``[M,H,W]``; each map synthesized ``samples`` times -> mean LPIPS over pairs and maps."""
        values = []
        for i in range(len(labels)):
            reps = np.repeat(labels[i : i + 1], samples, axis=0)
            inst = np.repeat(instances[i : i + 1], samples, axis=0) if instances is not None else None
            images = synth.synthesize(reps, inst, seed=seed + SEED_OFFSET + i * samples, batch_size=samples)
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).to(self.device)
            for a, b in itertools.combinations(range(samples), 2):
                self.metric.reset()
                values.append(float(self.metric(x[a : a + 1], x[b : b + 1])))
        return float(np.mean(values))
