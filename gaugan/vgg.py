"""VGG19 features for the perceptual loss, with torchvision's ImageNet weights read from a file. Never random.

The conv stack is torchvision's ``vgg19().features`` up to relu5_1, with the same module indices,
so torchvision's ``vgg19-dcbb9e9d.pth`` loads into it; the classifier (100M parameters the loss
never uses) is not built.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
import torch.nn as nn

from gaugan.errors import CheckpointError, MissingFileError

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
# torchvision's configuration "E" (VGG19): conv widths, "M" = 2x2 max-pool
_LAYOUT: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)
# features indices right after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
SLICE_ENDS = (2, 7, 12, 21, 30)


class VGGWeightsMissing(MissingFileError):
    """The VGG19 weights file is not where the loss looks for it."""


def default_weights_path() -> Path:
    """Where torchvision would cache the file: ``<torch.hub.get_dir()>/checkpoints/vgg19-dcbb9e9d.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def resolve_vgg_weights(path: str | Path | None = None) -> Path:
    """The weights file to use: ``path`` when given, else the torch hub cache; raises VGGWeightsMissing."""
    hub = default_weights_path()
    candidate = Path(path).expanduser() if path else hub
    if candidate.is_file():
        return candidate
    where = f"{candidate} (given as train.vgg_weights)" if path else f"{hub} (the torch hub cache)"
    raise VGGWeightsMissing(
        f"VGG19 weights not found at {where}. The VGG perceptual loss needs torchvision's ImageNet VGG19 "
        f"weights, the file {VGG19_FILE} ({VGG19_URL}): put it at {hub} (the torch hub cache; $TORCH_HOME "
        f"moves it) or anywhere and set train.vgg_weights to its path"
        + (f" (now {candidate})" if path else "")
        + "; or set train.lambda_vgg: 0 to turn the VGG loss off."
    )


def vgg19_features(upto: int = SLICE_ENDS[-1]) -> nn.Sequential:
    """torchvision's VGG19 ``features`` layers [0, upto), uninitialised beyond PyTorch's defaults."""
    layers: list[nn.Module] = []
    channels = 3
    for item in _LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            width = cast(int, item)  # every entry but "M" is a conv width
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = width
    return nn.Sequential(*layers[:upto])


class VGG19Features(nn.Module):
    """Frozen VGG19; ``forward(x)`` returns the relu1_1 .. relu5_1 feature maps of x as it is.

    The images go in as the generator makes them, in [-1, 1], without ImageNet's mean and std:
    that is what the reference does, and what the paper's ``lambda_vgg: 10`` was tuned with.
    """

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        path = resolve_vgg_weights(weights)
        features = vgg19_features()
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: not a VGG19 state_dict (got {type(state).__name__})")
        own = features.state_dict()
        picked, problems = {}, []
        for key, value in own.items():
            stored = state.get(f"features.{key}")
            if stored is None:
                problems.append(f"missing features.{key}")
            elif tuple(stored.shape) != tuple(value.shape):
                problems.append(f"features.{key} has shape {tuple(stored.shape)}, expected {tuple(value.shape)}")
            else:
                picked[key] = stored
        if problems:
            raise CheckpointError(
                f"{path} is not torchvision's VGG19 state_dict ({VGG19_FILE}): " + "; ".join(problems[:4])
            )
        features.load_state_dict(picked, strict=True)
        starts = (0,) + SLICE_ENDS[:-1]
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in zip(starts, SLICE_ENDS, strict=True))
        self.weights_file = str(path)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:
        return super().train(False)  # always frozen, whatever the trainer does

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for s in self.slices:
            x = s(x)
            out.append(x)
        return out
