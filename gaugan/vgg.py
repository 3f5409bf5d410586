"""VGG19 features for the perceptual loss, from torchvision's ImageNet weights. Never random."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

VGG19_FILE = "vgg19-dcbb9e9d.pth"
# torchvision vgg19.features indices that end at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
SLICE_ENDS = (2, 7, 12, 21, 30)


class VGGWeightsMissing(FileNotFoundError):
    pass


def default_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def resolve_vgg_weights(path: str | Path | None) -> Path:
    candidate = Path(path) if path else default_weights_path()
    if candidate.is_file():
        return candidate
    raise VGGWeightsMissing(
        f"VGG19 weights not found at {candidate}. The VGG perceptual loss needs torchvision's ImageNet "
        f"VGG19 weights ({VGG19_FILE}): put the file at {default_weights_path()} (the torch hub cache) or set "
        "train.vgg_weights to its path; or set train.lambda_vgg: 0 to train without the VGG loss."
    )


class VGG19Features(nn.Module):
    """Frozen VGG19; inputs in [-1, 1] are normalised with ImageNet statistics first."""

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        from torchvision.models import vgg19

        path = resolve_vgg_weights(weights)
        net = vgg19(weights=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        features = net.features
        starts = (0,) + SLICE_ENDS[:-1]
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in zip(starts, SLICE_ENDS))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.weights_file = str(path)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)  # always frozen

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for s in self.slices:
            x = s(x)
            out.append(x)
        return out
