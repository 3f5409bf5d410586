"""The multi-scale PatchGAN discriminator; it returns every intermediate feature for feature matching."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gaugan.config import GauGANConfig
from gaugan.layers import nonspade_norm


class NLayerDiscriminator(nn.Module):
    """4x4 convs: one plain stride-2 conv, ``n_layers_D - 1`` normed convs (the last one stride 1,
    channels doubling up to 512), and a 1-channel output conv. Input: label map and image, concatenated."""

    def __init__(self, config: GauGANConfig):
        super().__init__()
        kw, padw = 4, 2  # padw = ceil((kw - 1) / 2), as the reference
        nf = config.ndf
        input_nc = config.semantic_nc + 3
        sequence = [[nn.Conv2d(input_nc, nf, kw, stride=2, padding=padw), nn.LeakyReLU(0.2, False)]]
        for n in range(1, config.n_layers_D):
            nf_prev, nf = nf, min(nf * 2, 512)
            stride = 1 if n == config.n_layers_D - 1 else 2
            conv = nn.Conv2d(nf_prev, nf, kw, stride=stride, padding=padw)
            sequence.append([nonspade_norm(config.norm_D, conv), nn.LeakyReLU(0.2, False)])
        sequence.append([nn.Conv2d(nf, 1, kw, stride=1, padding=padw)])
        for i, layers in enumerate(sequence):
            self.add_module(f"model{i}", nn.Sequential(*layers))
        self.num_layers = len(sequence)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's output; the last one is the patch score map."""
        features = []
        for i in range(self.num_layers):
            x = getattr(self, f"model{i}")(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` discriminators on the input average-pooled by 1, 2, 4, ...; returns one feature list per scale."""

    def __init__(self, config: GauGANConfig):
        super().__init__()
        self.num_D = config.num_D
        for i in range(config.num_D):
            self.add_module(f"discriminator_{i}", NLayerDiscriminator(config))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        results = []
        for i in range(self.num_D):
            if i > 0:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            results.append(getattr(self, f"discriminator_{i}")(x))
        return results
