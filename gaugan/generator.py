"""The SPADE generator: label map in, image out, through SPADE residual blocks and nearest upsampling."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gaugan.config import GauGANConfig
from gaugan.errors import InputError
from gaugan.layers import SPADEResnetBlock


class SPADEGenerator(nn.Module):
    """``forward(seg, z=None)``: encoded label map [B, semantic_nc, H, W] -> image [B,3,H,W] in [-1,1].

    H and W must be multiples of 2**num_upsamplings (32, 64 or 128); any aspect ratio works, the
    first feature map is sized from the input. With ``use_vae`` the first map comes from the style
    vector ``z`` through a linear layer sized for (crop_size, aspect_ratio); at another input size
    it is resized (nearest) to fit, otherwise the network starts from the downsampled label map.
    """

    def __init__(self, config: GauGANConfig):
        super().__init__()
        self.config = config
        nf, norm, sem, hid = config.ngf, config.norm_G, config.semantic_nc, config.spade_hidden
        self.sh, self.sw = config.latent_hw
        if config.use_vae:
            self.fc: nn.Linear | nn.Conv2d = nn.Linear(config.z_dim, 16 * nf * self.sh * self.sw)
        else:
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

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """The first feature map's size for an input of this size (InputError if it does not divide)."""
        scale = 2**self.config.num_upsamplings
        if height % scale or width % scale:
            raise InputError(
                f"input size {height}x{width} is not a multiple of {scale} "
                f"(num_upsampling_layers={self.config.num_upsampling_layers!r}); resize or crop it"
            )
        return height // scale, width // scale

    def forward(self, seg: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if seg.dim() != 4 or seg.shape[1] != cfg.semantic_nc:
            raise InputError(f"expected an encoded label map [B,{cfg.semantic_nc},H,W], got {tuple(seg.shape)}")
        sh, sw = self.latent_size(seg.shape[2], seg.shape[3])
        segs = _Resized(seg)
        if cfg.use_vae:
            if z is None:  # no style: a random one from the global RNG, as the reference does
                z = torch.randn(seg.shape[0], cfg.z_dim, device=seg.device)
            x = self.fc(z).view(-1, 16 * cfg.ngf, self.sh, self.sw)
            if (sh, sw) != (self.sh, self.sw):
                x = F.interpolate(x, size=(sh, sw), mode="nearest")
        else:
            x = self.fc(segs.at((sh, sw)))

        x = self.head_0(x, segs.at(x.shape[2:]))
        x = self._up(x)
        x = self.G_middle_0(x, segs.at(x.shape[2:]))
        if cfg.num_upsampling_layers in ("more", "most"):
            x = self._up(x)
        x = self.G_middle_1(x, segs.at(x.shape[2:]))
        for block in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = self._up(x)
            x = block(x, segs.at(x.shape[2:]))
        if cfg.num_upsampling_layers == "most":
            x = self._up(x)
            x = self.up_4(x, segs.at(x.shape[2:]))
        x = self.conv_img(F.leaky_relu(x, 0.2))
        return torch.tanh(x)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")


class _Resized:
    """The label map resized (nearest) to each feature map's size, once per size: every SPADE of
    the blocks at one resolution reads the same resized map (their convolutions differ)."""

    def __init__(self, seg: torch.Tensor):
        self.maps = {tuple(seg.shape[2:]): seg}

    def at(self, size) -> torch.Tensor:
        size = tuple(size)
        if size not in self.maps:
            self.maps[size] = F.interpolate(self.maps[next(iter(self.maps))], size=size, mode="nearest")
        return self.maps[size]
