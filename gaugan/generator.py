"""The SPADE generator: label map in, image out, upsampling through SPADE residual blocks."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gaugan.config import GauGANConfig
from gaugan.layers import SPADEResnetBlock


class SPADEGenerator(nn.Module):
    def __init__(self, config: GauGANConfig):
        super().__init__()
        self.config = config
        nf, norm, sem, hid = config.ngf, config.norm_G, config.semantic_nc, config.spade_hidden
        self.sh, self.sw = config.latent_hw
        if config.use_vae:
            # start from a style vector: one linear layer to the first feature map
            self.fc = nn.Linear(config.z_dim, 16 * nf * self.sh * self.sw)
        else:
            # start from the label map itself, downsampled to the first feature map's size
            self.fc = nn.Conv2d(sem, 16 * nf, 3, padding=1)
        self.head_0 = SPADEResnetBlock(16 * nf, 16 * nf, norm, sem, hid)
        self.G_middle_0 = SPADEResnetBlock(16 * nf, 16 * nf, norm, sem, hid)
        self.G_middle_1 = SPADEResnetBlock(16 * nf, 16 * nf, norm, sem, hid)
        self.up_0 = SPADEResnetBlock(16 * nf, 8 * nf, norm, sem, hid)
        self.up_1 = SPADEResnetBlock(8 * nf, 4 * nf, norm, sem, hid)
        self.up_2 = SPADEResnetBlock(4 * nf, 2 * nf, norm, sem, hid)
        self.up_3 = SPADEResnetBlock(2 * nf, 1 * nf, norm, sem, hid)
        final_nc = nf
        if config.num_upsampling_layers == "most":
            self.up_4 = SPADEResnetBlock(nf, nf // 2, norm, sem, hid)
            final_nc = nf // 2
        self.conv_img = nn.Conv2d(final_nc, 3, 3, padding=1)

    def forward(self, seg: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """``seg``: encoded label map [B, semantic_nc, H, W]; H and W divisible by 2**upsamplings."""
        cfg = self.config
        scale = 2 ** cfg.num_upsamplings
        if cfg.use_vae:
            if z is None:
                z = torch.randn(seg.shape[0], cfg.z_dim, device=seg.device, dtype=seg.dtype)
            x = self.fc(z).view(-1, 16 * cfg.ngf, self.sh, self.sw)
        else:
            sh, sw = max(1, seg.shape[2] // scale), max(1, seg.shape[3] // scale)
            x = self.fc(F.interpolate(seg, size=(sh, sw), mode="nearest"))
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        x = self.head_0(x, seg)
        x = up(x)
        x = self.G_middle_0(x, seg)
        if cfg.num_upsampling_layers in ("more", "most"):
            x = up(x)
        x = self.G_middle_1(x, seg)
        for block in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = up(x)
            x = block(x, seg)
        if cfg.num_upsampling_layers == "most":
            x = up(x)
            x = self.up_4(x, seg)
        x = self.conv_img(F.leaky_relu(x, 0.2))
        return torch.tanh(x)
