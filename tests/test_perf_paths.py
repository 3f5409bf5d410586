"""The faster training paths compute what the plain paths compute, on a fixed batch.

- spectral norm folded into the output (``gaugan.layers.spectral_conv``) against the hook's
  divided weight: same outputs, losses and gradients within float32 tolerance, and the same
  power-iteration state (u, v) bit for bit;
- a whole trainer step with the fast paths against the plain paths: same losses and weights after
  the step, within float32 tolerance.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import gaugan.layers as layers
from gaugan.config import GauGANConfig
from gaugan.layers import SPADEResnetBlock, spectral_conv, spectral_norm
from gaugan.trainer import GauGANTrainer, TrainOptions


def _close(a: torch.Tensor, b: torch.Tensor, name: str = "", rel: float = 1e-4, floor: float = 0.0) -> None:
    """Within ``rel`` of the tensor's scale (at least ``floor``): gradients are sums with cancellation,
    so a few elements are near zero and only a bound relative to the largest one is meaningful; a
    bias that a batch norm cancels has a gradient of rounding noise only, hence the floor."""
    scale = max(b.abs().max().item(), floor, 1e-12)
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * scale, msg=name or None)


def _plain(monkeypatch) -> None:
    monkeypatch.setattr(layers, "spectral_conv", lambda conv, x: conv(x))


def test_spectral_conv_matches_the_hook_and_keeps_the_power_iteration():
    torch.manual_seed(0)
    conv = spectral_norm(nn.Conv2d(64, 48, 3, padding=1))
    twin = copy.deepcopy(conv)
    x = torch.randn(2, 64, 4, 4, requires_grad=True)  # output 2*48*16 < weight 48*64*9: folded
    x2 = x.detach().clone().requires_grad_(True)
    for _ in range(3):  # three training forwards: three power iterations each way
        y_fast, y_plain = spectral_conv(conv, x), twin(x2)
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y_fast)
    (y_fast * g).sum().backward()
    (y_plain * g).sum().backward()
    _close(conv.weight_orig.grad, twin.weight_orig.grad)
    torch.testing.assert_close(conv.bias.grad, twin.bias.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(conv.weight_u, twin.weight_u) and torch.equal(conv.weight_v, twin.weight_v)


def test_spectral_conv_takes_the_hook_where_the_output_is_larger_or_in_eval():
    torch.manual_seed(0)
    conv = spectral_norm(nn.Conv2d(4, 4, 3, padding=1))
    x = torch.randn(1, 4, 16, 16)  # output 1024 > weight 144: the hook divides the weight
    y = spectral_conv(conv, x)
    torch.testing.assert_close(y, nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
    conv.eval()
    before = conv.weight_u.clone()
    spectral_conv(conv, torch.randn(1, 4, 1, 1))
    assert torch.equal(conv.weight_u, before)  # eval: no power iteration


def test_resnet_block_fast_equals_plain(monkeypatch):
    torch.manual_seed(0)
    block = SPADEResnetBlock(64, 32, "spectralspadebatch3x3", semantic_nc=5, hidden=16)
    twin = copy.deepcopy(block)
    x = torch.randn(2, 64, 4, 4, requires_grad=True)
    seg = torch.zeros(2, 5, 16, 16).scatter_(1, torch.randint(0, 5, (2, 1, 16, 16)), 1.0)
    fast = block(x, seg)
    _plain(monkeypatch)
    plain = twin(x, seg)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    fast.square().sum().backward()
    plain.square().sum().backward()
    floor = 1e-2 * max(p.grad.abs().max().item() for p in twin.parameters())
    for (name, a), b in zip(block.named_parameters(), twin.parameters(), strict=True):
        _close(a.grad, b.grad, name, floor=floor)


def _trainer() -> GauGANTrainer:
    config = GauGANConfig(label_nc=6, use_instance=False, ngf=8, ndf=8, spade_hidden=16, n_layers_D=2, crop_size=64)
    torch.manual_seed(0)
    return GauGANTrainer(config, TrainOptions(lambda_vgg=0.0, ema_decay=None, total_steps=10))


def test_trainer_step_fast_equals_plain(monkeypatch):
    """Losses of two steps, G's gradients of the first, and the weights after: Adam (beta1 0) turns a
    gradient element at rounding level into an update of +-lr whichever its sign, so weights may
    differ by up to 2 lr at the first step where the gradient is noise, and by up to
    2 lr sqrt(1 + beta2) at the second (a noise-level first gradient leaves the second step's
    bias-corrected denominator at g2 / sqrt(1 + beta2)); everything else within float32."""
    g = torch.Generator().manual_seed(1)
    batch = {"label": torch.randint(0, 6, (2, 64, 64), generator=g), "image": torch.rand(2, 3, 64, 64, generator=g)}
    runs = []
    for plain in (False, True):
        if plain:
            _plain(monkeypatch)
        trainer = _trainer()
        torch.manual_seed(2)
        first = trainer.train_step(batch)
        grads = {n: p.grad.clone() for n, p in trainer.netG.named_parameters()}
        runs.append((trainer, [first, trainer.train_step(batch)], grads))
    (fast, fast_losses, fast_grads), (plain_, plain_losses, plain_grads) = runs
    for a, b in zip(fast_losses, plain_losses, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    floor = 1e-2 * max(v.abs().max().item() for v in plain_grads.values())
    for name, grad in plain_grads.items():
        _close(fast_grads[name], grad, name, floor=floor)
    group = fast.opt_G.param_groups[0]
    bound = 2 * group["lr"] * (1 + (1 + group["betas"][1]) ** 0.5) * 1.01  # two steps' worst sign flips
    params = dict(fast.netG.named_parameters())
    for name, a in fast.netG.state_dict().items():
        b = plain_.netG.state_dict()[name]
        if name in params:
            assert (a - b).abs().max().item() <= bound, name
        else:  # buffers follow the weights: batch-norm statistics (some means near 0: a floor), and
            # spectral-norm power-iteration vectors, which turn with rounding where the top two singular
            # values are close (1% of their scale measured on one CPU, 0.4% on another)
            _close(a, b, name, rel=2e-2, floor=1e-2)


def test_spade_fused_modulation_equals_the_formula():
    torch.manual_seed(0)
    spade = layers.SPADE("spadebatch3x3", 16, 5, hidden=8)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    seg = torch.zeros(2, 5, 8, 8).scatter_(1, torch.randint(0, 5, (2, 1, 8, 8)), 1.0)
    fast = spade(x, seg)
    actv = spade.mlp_shared(seg)
    plain = spade.param_free_norm(x) * (1 + spade.mlp_gamma(actv)) + spade.mlp_beta(actv)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    (g_fast,) = torch.autograd.grad(fast.square().sum(), x)
    (g_plain,) = torch.autograd.grad(plain.square().sum(), x)
    _close(g_fast, g_plain)
