"""The VAE style encoder: an image to the mean and log-variance of its style vector."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gaugan.config import GauGANConfig
from gaugan.layers import nonspade_norm


class ConvEncoder(nn.Module):
    def __init__(self, config: GauGANConfig):
        super().__init__()
        ndf, norm = config.nef, config.norm_E
        conv = lambda cin, cout: nonspade_norm(norm, nn.Conv2d(cin, cout, 3, stride=2, padding=1))  # noqa: E731
        self.layer1 = conv(3, ndf)
        self.layer2 = conv(ndf, ndf * 2)
        self.layer3 = conv(ndf * 2, ndf * 4)
        self.layer4 = conv(ndf * 4, ndf * 8)
        self.layer5 = conv(ndf * 8, ndf * 8)
        self.use_layer6 = config.crop_size >= 256
        if self.use_layer6:
            self.layer6 = conv(ndf * 8, ndf * 8)
        self.fc_mu = nn.Linear(ndf * 8 * 4 * 4, config.z_dim)
        self.fc_var = nn.Linear(ndf * 8 * 4 * 4, config.z_dim)
        self.size = 256 if self.use_layer6 else 128

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[2] != self.size or image.shape[3] != self.size:
            image = F.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = self.layer1(image)
        for layer in [self.layer2, self.layer3, self.layer4, self.layer5] + ([self.layer6] if self.use_layer6 else []):
            x = layer(F.leaky_relu(x, 0.2))
        x = F.leaky_relu(x, 0.2).flatten(1)
        return self.fc_mu(x), self.fc_var(x)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    std = torch.exp(0.5 * logvar)
    eps = torch.randn(std.shape, generator=generator, device=std.device if generator is None else "cpu").to(std)
    return eps * std + mu
