"""Segmentation networks that score generated images (mIoU, pixel accuracy).

- ``unet-small``: a small in-repo UNet (``segmenter.width`` channels at full resolution, doubled
  at each of three downsamplings), trained here from scratch on the real training images of the
  prepared dataset. No download, no torchvision.
- ``fcn_resnet50``, ``deeplabv3_resnet50``, ``deeplabv3_mobilenet_v3_large``,
  ``lraspp_mobilenet_v3_large``: torchvision models built without any download and loaded from a
  weights file (``segmenter.weights``, see ``segmenter_training.load_pretrained``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import SegmenterError

TORCHVISION_ARCHS = (
    "fcn_resnet50",
    "deeplabv3_resnet50",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
)
ARCHS = ("unet-small",) + TORCHVISION_ARCHS
# Input normalisation comes from the segmenter's spec (segmenter_spec.py; ImageNet's by default,
# as torchvision's segmentation models were trained).


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNetSmall(nn.Module):
    """Three-level UNet: ``[B,3,H,W]`` normalised images -> ``[B,num_classes,H,W]`` logits (any H, W)."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        w = width
        self.enc1 = _double_conv(3, w)
        self.enc2 = _double_conv(w, 2 * w)
        self.enc3 = _double_conv(2 * w, 4 * w)
        self.mid = _double_conv(4 * w, 8 * w)
        self.up3 = nn.ConvTranspose2d(8 * w, 4 * w, 2, stride=2)
        self.dec3 = _double_conv(8 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _double_conv(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _double_conv(2 * w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        m = self.mid(F.max_pool2d(e3, 2))
        d3 = self.dec3(torch.cat([self.up3(m), e3], 1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)[..., :h, :w]


class TorchvisionLogits(nn.Module):
    """torchvision segmentation models return ``{"out": logits, ...}``; keep only the logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def build_network(arch: str, num_classes: int, width: int = 32) -> nn.Module:
    """An untrained network; no download ever (torchvision models get ``weights=None``)."""
    if arch == "unet-small":
        return UNetSmall(num_classes, width)
    if arch in TORCHVISION_ARCHS:
        from torchvision.models import segmentation as tvseg

        kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
        if arch != "lraspp_mobilenet_v3_large":
            kwargs["aux_loss"] = False
        return TorchvisionLogits(getattr(tvseg, arch)(**kwargs))
    raise SegmenterError(f"unknown segmenter.arch {arch!r}; choose one of {', '.join(ARCHS)}")
