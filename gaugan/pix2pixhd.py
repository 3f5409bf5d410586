"""The pix2pixHD generator (``model.netG: pix2pixhd``): the baseline GauGAN is explained against.

It takes the encoded label map at its input only: a 7x7 convolution, ``resnet_n_downsample``
stride-2 convolutions, ``resnet_n_blocks`` residual blocks, as many transposed convolutions, a 7x7
convolution and tanh, each convolution followed by ``norm_G``'s plain norm (instance norm by
default). On a map of one class the first convolution's output is constant over the image, which
instance norm turns into zeros: in exact arithmetic every class gives the same image (in float32
the rounding residue is scaled back up by the later instance norms; tests/test_pix2pixhd.py). SPADE
feeds the map into every normalization instead (the paper's Sec. 3).

The modules and their order follow NVlabs/SPADE's ``Pix2PixHDGenerator`` (``--netG pix2pixhd``),
so its checkpoints' keys (``model.<i>...``) load here unchanged; this code is written from that
description, not copied. The reference builds its norm with ``get_nonspade_norm_layer``, whose plain
``instance`` (its default for this generator) fails there (only ``spectral...`` norms build): here
both work, and the import checks the keys.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gaugan.config import GauGANConfig, parse_norm_G
from gaugan.errors import InputError
from gaugan.layers import nonspade_norm


class ResnetBlock(nn.Module):
    """x + (pad, conv, norm, ReLU, pad, conv, norm)(x), the width kept."""

    def __init__(self, channels: int, norm: str, kernel_size: int):
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(pad),
            nonspade_norm(norm, nn.Conv2d(channels, channels, kernel_size)),
            nn.ReLU(),
            nn.ReflectionPad2d(pad),
            nonspade_norm(norm, nn.Conv2d(channels, channels, kernel_size)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class Pix2PixHDGenerator(nn.Module):
    """``forward(seg, z=None)``: encoded label map [B, semantic_nc, H, W] -> image [B,3,H,W] in [-1,1];
    H and W multiples of 2**resnet_n_downsample; ``z`` is ignored (no style noise)."""

    def __init__(self, config: GauGANConfig):
        super().__init__()
        self.config = config
        spectral, spade, kind, _ = parse_norm_G(config.norm_G)
        assert not spade, "GauGANConfig refuses a SPADE norm_G for pix2pixhd"
        norm = ("spectral" if spectral else "") + kind
        width, first = config.ngf, config.resnet_initial_kernel_size
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(first // 2),
            nonspade_norm(norm, nn.Conv2d(config.semantic_nc, width, first)),
            nn.ReLU(),
        ]
        for _ in range(config.resnet_n_downsample):
            layers += [nonspade_norm(norm, nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)), nn.ReLU()]
            width *= 2
        layers += [ResnetBlock(width, norm, config.resnet_kernel_size) for _ in range(config.resnet_n_blocks)]
        for _ in range(config.resnet_n_downsample):
            up = nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1)
            layers += [nonspade_norm(norm, up), nn.ReLU()]
            width //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    @property
    def size_multiple(self) -> int:
        return 2**self.config.resnet_n_downsample

    def forward(self, seg: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if seg.dim() != 4 or seg.shape[1] != cfg.semantic_nc:
            raise InputError(f"expected an encoded label map [B,{cfg.semantic_nc},H,W], got {tuple(seg.shape)}")
        if seg.shape[2] % self.size_multiple or seg.shape[3] % self.size_multiple:
            raise InputError(
                f"input size {seg.shape[2]}x{seg.shape[3]} is not a multiple of {self.size_multiple} "
                f"(resnet_n_downsample={cfg.resnet_n_downsample}); resize or crop it"
            )
        return self.model(seg)
