"""Losses with the paper's weights: hinge GAN, feature matching (10), VGG (10), KL (0.05)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


def _finals(preds: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [scale[-1] for scale in preds]


def hinge_d_loss(preds: list[list[torch.Tensor]], real: bool) -> torch.Tensor:
    """Discriminator hinge: mean(relu(1 - D(real))) or mean(relu(1 + D(fake))), averaged over scales."""
    sign = -1.0 if real else 1.0
    losses = [F.relu(1.0 + sign * p).mean() for p in _finals(preds)]
    return torch.stack(losses).mean()


def hinge_g_loss(preds_fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """Generator hinge: -mean(D(fake)), averaged over scales."""
    return torch.stack([-p.mean() for p in _finals(preds_fake)]).mean()


def feature_matching_loss(preds_fake: list[list[torch.Tensor]], preds_real: list[list[torch.Tensor]],
                          weight: float = 10.0) -> torch.Tensor:
    """L1 between the discriminator's intermediate features of fake and (detached) real images."""
    num_D = len(preds_fake)
    total = preds_fake[0][0].new_zeros(())
    for fake_scale, real_scale in zip(preds_fake, preds_real):
        for f, r in zip(fake_scale[:-1], real_scale[:-1]):
            total = total + F.l1_loss(f, r.detach()) * (weight / num_D)
    return total


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)), summed over latent dimensions and averaged over the batch.

    The reference sums over the batch too; the mean keeps the gradient the same whether a global
    batch runs in one process or is split over DDP processes (which average gradients).
    """
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


class VGGLoss(nn.Module):
    """Perceptual loss on VGG19 relu1_1 .. relu5_1 with weights 1/32 .. 1."""

    def __init__(self, vgg: nn.Module):
        super().__init__()
        self.vgg = vgg

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fake_feats = self.vgg(fake)
        with torch.no_grad():
            real_feats = self.vgg(real)
        total = fake.new_zeros(())
        for w, f, r in zip(VGG_LAYER_WEIGHTS, fake_feats, real_feats):
            total = total + w * F.l1_loss(f, r.detach())
        return total
