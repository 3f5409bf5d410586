"""The paper's losses: the GAN loss (hinge, as the paper; least squares, the original
cross-entropy or Wasserstein, as the reference offers), discriminator feature matching, VGG19
perceptual loss, KL divergence.

Discriminator outputs are lists (one per scale) of lists of features, the last being the score
map. The GAN losses are averaged over the scales, as the reference does.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

LAMBDA_FEAT = 10.0
LAMBDA_VGG = 10.0
LAMBDA_KLD = 0.05
VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)  # relu1_1 .. relu5_1


def _scores(preds: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [scale[-1] if isinstance(scale, (list, tuple)) else scale for scale in preds]


GAN_MODES = ("hinge", "ls", "original", "w")


def _target_loss(score: torch.Tensor, target: float, mode: str) -> torch.Tensor:
    """Least squares or cross-entropy (on logits) of a score map against a constant target."""
    wanted = torch.full_like(score, target)
    return F.mse_loss(score, wanted) if mode == "ls" else F.binary_cross_entropy_with_logits(score, wanted)


def gan_d_loss(preds: list[list[torch.Tensor]], real: bool, mode: str = "hinge") -> torch.Tensor:
    """D's loss on real (``real=True``) or generated images, averaged over the scales.

    hinge: mean(relu(1 - D(real))), mean(relu(1 + D(fake))); w: -mean(D(real)), mean(D(fake));
    ls / original: squared error / cross-entropy against 1 (real) and 0 (fake).
    """
    if mode not in GAN_MODES:
        raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {mode!r}")
    sign = -1.0 if real else 1.0
    terms = []
    for score in _scores(preds):
        score = score.float()
        if mode == "hinge":
            terms.append(F.relu(1.0 + sign * score).mean())
        elif mode == "w":
            terms.append(sign * score.mean())
        else:
            terms.append(_target_loss(score, 1.0 if real else 0.0, mode))
    return torch.stack(terms).mean()


def gan_g_loss(preds_fake: list[list[torch.Tensor]], mode: str = "hinge") -> torch.Tensor:
    """G's loss on D's scores of its images, averaged over the scales: -mean(D(fake)) for hinge and
    w; squared error / cross-entropy against 1 (the non-saturating loss) for ls / original."""
    if mode not in GAN_MODES:
        raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {mode!r}")
    if mode in ("hinge", "w"):
        return torch.stack([-s.float().mean() for s in _scores(preds_fake)]).mean()
    return torch.stack([_target_loss(s.float(), 1.0, mode) for s in _scores(preds_fake)]).mean()


def hinge_d_loss(preds: list[list[torch.Tensor]], real: bool) -> torch.Tensor:
    """D's hinge: mean(relu(1 - D(real))) or mean(relu(1 + D(fake))), averaged over the scales."""
    return gan_d_loss(preds, real, "hinge")


def hinge_g_loss(preds_fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """G's hinge: -mean(D(fake)), averaged over the scales."""
    return gan_g_loss(preds_fake, "hinge")


def feature_matching_loss(
    preds_fake: list[list[torch.Tensor]], preds_real: list[list[torch.Tensor]], lambda_feat: float = LAMBDA_FEAT
) -> torch.Tensor:
    """Sum over scales and intermediate layers (score map excluded) of L1(fake feature, real feature),
    each weighted lambda_feat / num_D; the real features are targets (detached)."""
    if len(preds_fake) != len(preds_real):
        raise ValueError(f"{len(preds_fake)} fake scales but {len(preds_real)} real ones")
    weight = lambda_feat / len(preds_fake)
    terms = [
        F.l1_loss(f.float(), r.detach().float())
        for fake_scale, real_scale in zip(preds_fake, preds_real, strict=True)
        for f, r in zip(fake_scale[:-1], real_scale[:-1], strict=True)
    ]
    if not terms:
        return preds_fake[0][-1].new_zeros((), dtype=torch.float32)
    return torch.stack(terms).sum() * weight


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over the latent dimensions, then the MEAN over the
    batch (``reduction="sum"``: the sum, as the reference).

    The mean is a deliberate difference: the gradient is then the same whether a global batch runs
    in one process or is split over DDP processes (DDP averages gradients), and lambda_kld does not
    have to change with the batch size. The reference's sum weighs the KL term by the per-GPU batch.
    """
    mu, logvar = mu.float(), logvar.float()
    per_sample = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


class VGGLoss(nn.Module):
    """Perceptual loss: sum over relu1_1..relu5_1 of weight * L1(VGG(fake), VGG(real)), real detached."""

    def __init__(self, vgg: nn.Module, layer_weights: tuple[float, ...] = VGG_LAYER_WEIGHTS):
        super().__init__()
        self.vgg = vgg
        self.layer_weights = tuple(layer_weights)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fake_feats = self.vgg(fake)
        with torch.no_grad():
            real_feats = self.vgg(real)
        if len(fake_feats) != len(self.layer_weights):
            raise ValueError(f"the VGG gives {len(fake_feats)} feature maps for {len(self.layer_weights)} weights")
        terms = [
            w * F.l1_loss(f.float(), r.detach().float())
            for w, f, r in zip(self.layer_weights, fake_feats, real_feats, strict=True)
        ]
        return torch.stack(terms).sum()
