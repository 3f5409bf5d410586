"""The VAE style encoder: an image to the mean and log-variance of its style vector."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gaugan.config import GauGANConfig
from gaugan.layers import nonspade_norm


class ConvEncoder(nn.Module):
    """Stride-2 3x3 convs down to a 4x4 map, then two linear heads: ``forward(image) -> (mu, logvar)``.

    Like the reference, the image is first resized (bilinear) to 256x256, and crops of 256 and up
    get a sixth conv. For smaller crops the reference has no sixth conv but still resizes to 256,
    which does not fit its linear layers; here those inputs are resized to 128 instead.
    """

    def __init__(self, config: GauGANConfig):
        super().__init__()
        nf, norm = config.nef, config.norm_E

        def conv(cin: int, cout: int) -> nn.Module:
            return nonspade_norm(norm, nn.Conv2d(cin, cout, 3, stride=2, padding=1))

        self.layer1 = conv(3, nf)
        self.layer2 = conv(nf, nf * 2)
        self.layer3 = conv(nf * 2, nf * 4)
        self.layer4 = conv(nf * 4, nf * 8)
        self.layer5 = conv(nf * 8, nf * 8)
        self.use_layer6 = config.crop_size >= 256
        if self.use_layer6:
            self.layer6 = conv(nf * 8, nf * 8)
        self.input_size = 256 if self.use_layer6 else 128
        self.fc_mu = nn.Linear(nf * 8 * 4 * 4, config.z_dim)
        self.fc_var = nn.Linear(nf * 8 * 4 * 4, config.z_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[2:] != (self.input_size, self.input_size):
            image = F.interpolate(image, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = self.layer1(image)
        layers = [self.layer2, self.layer3, self.layer4, self.layer5] + ([self.layer6] if self.use_layer6 else [])
        for layer in layers:
            x = layer(F.leaky_relu(x, 0.2))
        x = F.leaky_relu(x, 0.2).flatten(1)
        return self.fc_mu(x), self.fc_var(x)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + eps * exp(logvar / 2); eps from ``generator`` (a CPU generator) or torch's global RNG."""
    std = torch.exp(0.5 * logvar)
    if generator is None:
        eps = torch.randn_like(std)
    else:
        eps = torch.randn(std.shape, generator=generator, device=generator.device, dtype=std.dtype).to(std.device)
    return eps * std + mu
