"""SPADE normalization and the SPADE residual block (the paper's Fig. 2 and 4)."""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm


def parse_spade_norm(norm_G: str) -> tuple[str, int]:
    """'spectralspadesyncbatch3x3' -> ('syncbatch', 3)."""
    match = re.search(r"spade(\D+)(\d)x\d", norm_G)
    if not match:
        raise ValueError(f"norm_G {norm_G!r} is not of the form [spectral]spade<batch|syncbatch|instance><k>x<k>")
    kind, ks = match.group(1), int(match.group(2))
    if kind not in ("batch", "syncbatch", "instance"):
        raise ValueError(f"norm_G {norm_G!r}: unknown parameter-free norm {kind!r}; use batch, syncbatch or instance")
    return kind, ks


def param_free_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    # 'syncbatch' is built as BatchNorm2d (same state_dict) and converted by the trainer on CUDA only:
    # SyncBatchNorm does not run on CPU.
    return nn.BatchNorm2d(channels, affine=False)


class SPADE(nn.Module):
    """Normalize without parameters, then modulate with per-pixel gamma and beta from the label map."""

    def __init__(self, norm_G: str, norm_nc: int, label_nc: int, hidden: int = 128):
        super().__init__()
        kind, ks = parse_spade_norm(norm_G)
        self.param_free_norm = param_free_norm(kind, norm_nc)
        pad = ks // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, ks, padding=pad), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, ks, padding=pad)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, ks, padding=pad)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """Two SPADE-ReLU-conv units with a skip; the skip is learned when the channel count changes."""

    def __init__(self, fin: int, fout: int, norm_G: str, semantic_nc: int, hidden: int = 128):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = nn.Conv2d(fin, fmiddle, 3, padding=1)
        self.conv_1 = nn.Conv2d(fmiddle, fout, 3, padding=1)
        if self.learned_shortcut:
            self.conv_s = nn.Conv2d(fin, fout, 1, bias=False)
        if norm_G.startswith("spectral"):
            self.conv_0 = spectral_norm(self.conv_0)
            self.conv_1 = spectral_norm(self.conv_1)
            if self.learned_shortcut:
                self.conv_s = spectral_norm(self.conv_s)
        spade_norm = norm_G.replace("spectral", "")
        self.norm_0 = SPADE(spade_norm, fin, semantic_nc, hidden)
        self.norm_1 = SPADE(spade_norm, fmiddle, semantic_nc, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(spade_norm, fin, semantic_nc, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx


def nonspade_norm(norm: str, conv: nn.Conv2d) -> nn.Module:
    """'spectralinstance' etc. for D and E: spectral norm on the conv, then a plain norm layer.

    The conv's bias is dropped when a norm follows it (the norm would cancel it), as in the
    reference, so its checkpoints' keys match.
    """
    if norm.startswith("spectral"):
        conv = spectral_norm(conv)
        norm = norm[len("spectral"):]
    if norm in ("", "none"):
        return conv
    if conv.bias is not None:
        delattr(conv, "bias")
        conv.register_parameter("bias", None)
    channels = conv.out_channels if hasattr(conv, "out_channels") else conv.weight.shape[0]
    if norm == "instance":
        layer = nn.InstanceNorm2d(channels, affine=False)
    elif norm in ("batch", "syncbatch"):
        layer = nn.BatchNorm2d(channels, affine=True)
    else:
        raise ValueError(f"unknown norm {norm!r}; use instance, batch, syncbatch or none (optionally spectral...)")
    return nn.Sequential(conv, layer)
