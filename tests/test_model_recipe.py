"""The reference's training recipe: initial weights, GAN losses, D steps per G step, gradient
accumulation, the Cityscapes generator's structure and the reference's resampling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import random_batch, tiny_config
from PIL import Image

from gaugan.config import reference_setting
from gaugan.generator import SPADEGenerator
from gaugan.losses import gan_d_loss, gan_g_loss
from gaugan.trainer import GauGANTrainer, TrainOptions
from gaugan.transforms import Geometry, PairTransform, resize_image, resize_map
from gaugan.weight_init import init_weights


# ------------------------------------------------------------------------------------ initialisation
def test_reference_init_starts_near_grey_images_and_zero_modulation():
    cfg = tiny_config(label_nc=5, use_vae=True, use_instance=True, ngf=8, ndf=8, nef=8)
    batch = random_batch(cfg, 4)
    stats = {}
    for init_type in ("xavier", "none"):
        torch.manual_seed(0)
        trainer = GauGANTrainer(cfg, TrainOptions(lambda_vgg=0.0, init_type=init_type))
        semantics, real = trainer._prepare(batch)
        with torch.no_grad():
            fake = trainer.netG(semantics)
            score = trainer.netD(torch.cat([semantics, fake], 1))[0][-1]
        stats[init_type] = (fake.std().item(), score.mean().abs().item())
    # measured on the reference at this scale: output std ~0.03 (0.28 with PyTorch's defaults)
    assert stats["xavier"][0] < 0.1 < stats["none"][0]
    assert stats["xavier"][1] < 0.05 < stats["none"][1]

    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, TrainOptions(lambda_vgg=0.0))
    for net in (trainer.netG, trainer.netD, trainer.netE):
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                assert torch.count_nonzero(p) == 0, name
            elif p.dim() >= 2:  # xavier normal: std = gain * sqrt(2 / (fan_in + fan_out))
                fan_in, fan_out = p.shape[1] * p[0, 0].numel(), p.shape[0] * p[0, 0].numel()
                expected = 0.02 * (2.0 / (fan_in + fan_out)) ** 0.5
                assert p.std().item() == pytest.approx(expected, rel=0.35 if p.numel() > 500 else 1.0), name
    assert any(n.endswith("weight_orig") for n, _ in trainer.netD.named_parameters())  # spectral norm's weight


def test_affine_batch_norm_gets_weight_one_plus_noise():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    torch.manual_seed(1)
    init_weights(net, "normal", 0.02)
    bn = net[1]
    assert (bn.weight - 1).abs().max() < 0.1 and bn.weight.std() > 0 and torch.count_nonzero(bn.bias) == 0
    assert net[0].weight.std().item() == pytest.approx(0.02, rel=0.3)


# ------------------------------------------------------------------------------------ GAN losses
SCORES_FAKE = [[torch.tensor([[0.5, -2.0]])], [torch.tensor([[-0.25, 1.0]])]]
SCORES_REAL = [[torch.tensor([[2.0, 0.0]])], [torch.tensor([[1.5, -1.0]])]]


def _bce(x: float, target: float) -> float:
    p = 1 / (1 + np.exp(-x))
    return float(-(target * np.log(p) + (1 - target) * np.log(1 - p)))


def test_gan_modes_average_over_scales():
    mean = np.mean
    ls_fake = mean([mean([0.5**2, 2.0**2]), mean([0.25**2, 1.0])])
    ls_g = mean([mean([0.5**2, 3.0**2]), mean([1.25**2, 0.0])])
    assert gan_d_loss(SCORES_FAKE, False, "ls").item() == pytest.approx(ls_fake)
    assert gan_g_loss(SCORES_FAKE, "ls").item() == pytest.approx(ls_g)
    original_real = mean([mean([_bce(2.0, 1), _bce(0.0, 1)]), mean([_bce(1.5, 1), _bce(-1.0, 1)])])
    assert gan_d_loss(SCORES_REAL, True, "original").item() == pytest.approx(original_real, rel=1e-6)
    assert gan_g_loss(SCORES_FAKE, "original").item() == pytest.approx(
        mean([mean([_bce(0.5, 1), _bce(-2.0, 1)]), mean([_bce(-0.25, 1), _bce(1.0, 1)])]), rel=1e-6
    )
    assert gan_d_loss(SCORES_REAL, True, "w").item() == pytest.approx(-mean([1.0, 0.25]))
    assert gan_d_loss(SCORES_FAKE, False, "w").item() == pytest.approx(mean([-0.75, 0.375]))
    assert gan_g_loss(SCORES_FAKE, "w").item() == pytest.approx(gan_g_loss(SCORES_FAKE, "hinge").item())


@pytest.mark.parametrize("mode", ["ls", "original", "w"])
def test_every_gan_mode_trains(mode):
    cfg = tiny_config(label_nc=5, norm_G="spectralspadeinstance3x3")
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, TrainOptions(lambda_vgg=0.0, gan_mode=mode))
    before = trainer.netG.conv_img.weight.clone()
    losses = trainer.train_step(random_batch(cfg, 4))
    assert all(np.isfinite(v) for v in losses.values()) and not torch.equal(before, trainer.netG.conv_img.weight)


# ------------------------------------------------------------------------------------ step structure
def test_d_steps_per_g_updates_g_every_kth_step_only():
    cfg = tiny_config(label_nc=5, norm_G="spectralspadeinstance3x3")
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, TrainOptions(lambda_vgg=0.0, d_steps_per_g=2, ema_decay=None))
    g_changed, d_changed = [], []
    for step in range(4):
        g0 = trainer.netG.conv_img.weight.clone()
        d0 = next(trainer.netD.parameters()).clone()
        losses = trainer.train_step(random_batch(cfg, 4, seed=step))
        g_changed.append(not torch.equal(g0, trainer.netG.conv_img.weight))
        d_changed.append(not torch.equal(d0, next(trainer.netD.parameters())))
        assert ("G_GAN" in losses) == (step % 2 == 0)
    assert g_changed == [True, False, True, False] and d_changed == [True] * 4


def test_accumulated_micro_batches_give_the_whole_batchs_gradients():
    # instance norms and no spectral norm (its power iteration runs once per forward, so k
    # micro-batches iterate it k times): then two halves add up to the whole batch's gradients
    cfg = tiny_config(label_nc=5, norm_G="spadeinstance3x3", norm_D="instance", norm_E="instance", use_vae=True)
    grads = []
    for accumulation in (1, 2):
        torch.manual_seed(0)
        trainer = GauGANTrainer(cfg, TrainOptions(lambda_vgg=0.0, accumulation=accumulation, ema_decay=None))
        trainer._apply = lambda optimizer, scaler: None  # keep the accumulated gradients, skip the update
        torch.manual_seed(5)  # the style encoder's noise: the same draws in both runs
        trainer.train_step(random_batch(cfg, 4))
        nets = (trainer.generator, trainer.discriminator)
        grads.append({f"{i}.{n}": p.grad.clone() for i, net in enumerate(nets) for n, p in net.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], atol=1e-7, rtol=1e-4, msg=key)


def test_regenerate_trains_d_on_the_updated_generators_images():
    cfg = tiny_config(label_nc=5, norm_G="spectralspadeinstance3x3")
    batch = random_batch(cfg, 4)
    results = {}
    for d_fake in ("reuse", "regenerate"):
        torch.manual_seed(0)
        trainer = GauGANTrainer(cfg, TrainOptions(lambda_vgg=0.0, d_fake=d_fake, ema_decay=None))
        seen: list[torch.Tensor] = []

        def spy(sem, fake, real, seen=seen, original=trainer._discriminate):
            seen.append(fake.detach().clone())
            return original(sem, fake, real)

        trainer._discriminate = spy
        losses = trainer.train_step(batch)
        results[d_fake] = (seen, losses, trainer)
    (reuse_seen, reuse_losses, _), (regen_seen, regen_losses, regen) = results["reuse"], results["regenerate"]
    torch.testing.assert_close(reuse_seen[0], reuse_seen[1])  # G's pass and D's pass: the same images
    assert reuse_losses["G_GAN"] == pytest.approx(regen_losses["G_GAN"])  # the same G step
    semantics, _ = regen._prepare(batch)
    with torch.no_grad():  # eval: spectral norm uses the vectors the regenerating pass left, no new iteration
        updated = regen.netG.eval()(semantics)
    torch.testing.assert_close(regen_seen[1], updated)  # D saw the updated G's images
    assert (regen_seen[1] - regen_seen[0]).abs().max() > 1e-4


def test_kl_reduction_sum_is_the_batch_times_the_mean():
    from gaugan.losses import kl_loss

    mu, logvar = torch.randn(6, 8), torch.randn(6, 8) * 0.1
    assert kl_loss(mu, logvar, "sum").item() == pytest.approx(6 * kl_loss(mu, logvar).item(), rel=1e-5)


# ------------------------------------------------------------------------------------ Cityscapes
def test_cityscapes_setting_runs_g_middle_1_at_twice_the_resolution():
    cfg = dataclasses.replace(reference_setting("cityscapes"), ngf=2, spade_hidden=4)
    assert cfg.num_upsampling_layers == "more" and cfg.latent_hw == (4, 8)  # 512 / 2**6, aspect 2
    net = SPADEGenerator(cfg).eval()
    sizes = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            sizes[name] = tuple(output.shape[2:])

        return hook

    for name in ("G_middle_0", "G_middle_1", "up_0"):
        getattr(net, name).register_forward_hook(record(name))
    seg = torch.zeros(1, cfg.semantic_nc, 256, 512)
    seg[:, 7] = 1.0
    with torch.no_grad():
        out = net(seg)
    assert out.shape == (1, 3, 256, 512)
    assert sizes == {"G_middle_0": (8, 16), "G_middle_1": (16, 32), "up_0": (32, 64)}


# ------------------------------------------------------------------------------------ resampling
def test_resampling_is_pils_as_the_reference():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    labels = rng.integers(0, 30, (48, 80)).astype(np.uint8)
    for hw in [(20, 33), (96, 160), (31, 80)]:
        expected = np.asarray(TF.resize(Image.fromarray(image), list(hw), TF.InterpolationMode.BICUBIC))
        assert np.abs(resize_image(image, hw).astype(int) - expected.astype(int)).max() <= 1
        nearest = np.asarray(TF.resize(Image.fromarray(labels), list(hw), TF.InterpolationMode.NEAREST))
        np.testing.assert_array_equal(resize_map(labels, hw), nearest)
    noise = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert resize_image(noise, (64, 64)).std() < 0.6 * noise.std()  # antialiased: the noise averages out


@pytest.mark.parametrize(
    "mode,resized",
    [
        ("resize_and_crop", (72, 72)),
        ("scale_width_and_crop", (43, 72)),  # int(72 * 48 / 80)
        ("scale_width", (43, 72)),
        ("scale_shortside_and_crop", (72, 120)),
        ("scale_shortside", (72, 120)),
        ("crop", (48, 80)),
        ("fixed", (64, 64)),
        ("none", (64, 64)),  # 48 / 32 = 1.5 -> 2 and 80 / 32 = 2.5 -> 2 (Python's round, as the reference)
    ],
)
def test_preprocess_modes(mode, resized):
    geometry = Geometry(72, 64, 1.0, flip=False, preprocess_mode=mode)
    assert geometry.resized_hw(48, 80) == resized
    sample = {"id": "s", "image": np.zeros((48, 80, 3), np.uint8), "label": np.ones((48, 80), np.int64)}
    out = PairTransform(geometry, use_instance=False)(sample, seed=1)
    expected = (64, 64) if "crop" in mode or mode == "fixed" else resized
    assert tuple(out["label"].shape) == expected
    if mode == "scale_width_and_crop":  # 43 rows for a 64-row crop: the rest is padding, never a class
        assert (out["label"] == 255).sum() == (64 - 43) * 64
