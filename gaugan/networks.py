"""The networks of a config: G, D and the style encoder E, built in one place.

The config describes; this module builds. Everything that makes a network from a
:class:`~gaugan.config.GauGANConfig` (the trainer, the checkpoint readers, ``model-info``'s counts)
goes through these functions, so a new network family is added here once.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gaugan.config import GauGANConfig
from gaugan.discriminator import MultiscaleDiscriminator
from gaugan.encoder import ConvEncoder, reparameterize
from gaugan.generator import SPADEGenerator
from gaugan.pix2pixhd import Pix2PixHDGenerator

Generator = SPADEGenerator | Pix2PixHDGenerator  # the generator families (GauGANConfig.netG)


def build_generator(config: GauGANConfig) -> Generator:
    """The generator of ``config.netG``: SPADE (GauGAN) or pix2pixHD (its baseline)."""
    if config.netG == "pix2pixhd":
        return Pix2PixHDGenerator(config)
    return SPADEGenerator(config)


def build_discriminator(config: GauGANConfig) -> MultiscaleDiscriminator:
    return MultiscaleDiscriminator(config)


def build_encoder(config: GauGANConfig) -> ConvEncoder | None:
    """The style encoder of a multimodal model (``use_vae``), else None."""
    return ConvEncoder(config) if config.use_vae else None


class GeneratorModel(nn.Module):
    """G and, for multimodal models, the style encoder E: one module, so one DDP wraps both."""

    def __init__(self, config: GauGANConfig):
        super().__init__()
        self.netG = build_generator(config)
        self.netE = build_encoder(config)

    def forward(self, semantics: torch.Tensor, image: torch.Tensor | None = None):
        """-> (fake, mu, logvar); mu/logvar are None without an encoder or a style image."""
        mu = logvar = z = None
        if self.netE is not None and image is not None:
            mu, logvar = self.netE(image)
            z = reparameterize(mu, logvar)  # noise from torch's global RNG
        return self.netG(semantics, z), mu, logvar


def parameter_counts(config: GauGANConfig) -> dict[str, int]:
    """Trainable parameters of G, D (and E when use_vae), counted as the reference does.

    The networks are built on the meta device: nothing is allocated, so this is instant even for
    the 100M-parameter reference generators.
    """

    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        counts = {"G": count(build_generator(config)), "D": count(build_discriminator(config))}
        encoder = build_encoder(config)
        if encoder is not None:
            counts["E"] = count(encoder)
    return counts
