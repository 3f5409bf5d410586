"""Losses against hand-computed values; the VGG19 loader (weights file, layout, clear error)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gaugan.losses import VGGLoss, feature_matching_loss, hinge_d_loss, hinge_g_loss, kl_loss
from gaugan.vgg import VGG19_FILE, VGG19Features, VGGWeightsMissing, default_weights_path, vgg19_features

T = torch.tensor


def preds():
    """Two scales of [feature, feature, score map]; values chosen for easy hand arithmetic."""
    fake = [[T([1.0, -1.0]), T([2.0]), T([[0.5, -3.0]])], [T([0.0, 0.0]), T([4.0]), T([[-0.25]])]]
    real = [[T([0.0, 1.0]), T([2.5]), T([[2.0, 0.25]])], [T([1.0, -2.0]), T([1.0]), T([[1.5]])]]
    return fake, real


def test_hinge_losses_average_over_scales():
    fake, real = preds()
    # D fake: scale 0 mean(relu(1.5), relu(-2)) = 0.75; scale 1 relu(0.75) = 0.75
    assert hinge_d_loss(fake, real=False).item() == pytest.approx(0.75)
    # D real: scale 0 mean(relu(-1), relu(0.75)) = 0.375; scale 1 relu(-0.5) = 0 -> 0.1875
    assert hinge_d_loss(real, real=True).item() == pytest.approx(0.1875)
    # G: -mean(scores): scale 0 1.25, scale 1 0.25 -> 0.75
    assert hinge_g_loss(fake).item() == pytest.approx(0.75)


def test_feature_matching_skips_the_score_maps_and_detaches_the_real_features():
    fake, real = preds()
    # weight 10 / 2 scales; scale 0: 1.5 + 0.5, scale 1: 1.5 + 3
    assert feature_matching_loss(fake, real, 10.0).item() == pytest.approx(32.5)
    assert feature_matching_loss(fake, real, 4.0).item() == pytest.approx(13.0)
    fake[0][-1] = T([[100.0, 100.0]])  # score maps do not count
    assert feature_matching_loss(fake, real, 10.0).item() == pytest.approx(32.5)
    fake = [[t.clone().requires_grad_() for t in s] for s in fake]
    real = [[t.clone().requires_grad_() for t in s] for s in real]
    feature_matching_loss(fake, real).backward()
    assert fake[0][0].grad is not None and all(t.grad is None for s in real for t in s)


def test_kl_sums_latent_dims_and_averages_the_batch():
    mu = T([[0.5, -1.0], [0.0, 0.0]])
    logvar = T([[0.0, math.log(2.0)], [0.0, 0.0]])
    # sample 0: 0.125 + (1 - ln 2 / 2); sample 1 is the prior itself: 0
    first = 0.125 + 1 - math.log(2.0) / 2
    assert kl_loss(mu, logvar).item() == pytest.approx(first / 2)
    assert kl_loss(mu[:1], logvar[:1]).item() == pytest.approx(first)
    # the mean over the batch: two halves averaged give the whole (what DDP's gradient averaging needs)
    assert kl_loss(mu, logvar).item() == pytest.approx(
        (kl_loss(mu[:1], logvar[:1]) + kl_loss(mu[1:], logvar[1:])).item() / 2
    )


class _Stub(nn.Module):
    def forward(self, x):
        return [x * k for k in range(1, 6)]


def test_vgg_loss_layer_weights_and_detached_target():
    fake = torch.full((1, 3, 4, 4), 0.5, requires_grad=True)
    real = torch.full((1, 3, 4, 4), -0.25, requires_grad=True)
    loss = VGGLoss(_Stub())(fake, real)
    # layer k's L1 is k * 0.75, weighted 1/32, 1/16, 1/8, 1/4, 1
    assert loss.item() == pytest.approx(0.75 * (1 / 32 + 2 / 16 + 3 / 8 + 4 / 4 + 5))
    loss.backward()
    assert fake.grad is not None and real.grad is None


# ------------------------------------------------------------------------------------ VGG19 weights
@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A random state_dict with torchvision's VGG19 key names and shapes for the layers the loss uses."""
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in vgg19_features().state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)  # extra keys of the real file are ignored
    path = tmp_path_factory.mktemp("vgg") / VGG19_FILE
    torch.save(state, path)
    return path


def test_vgg_layout_is_torchvisions():
    from torchvision.models import vgg19

    with torch.device("meta"):
        reference = vgg19(weights=None).features[:30]
        ours = vgg19_features()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()
    ]
    assert [type(m) for m in ours] == [type(m) for m in reference]


def test_vgg_loads_from_an_explicit_path_and_from_the_hub_cache(vgg_file, tmp_path, monkeypatch):
    state = torch.load(vgg_file, weights_only=True)
    vgg = VGG19Features(vgg_file)
    assert torch.equal(vgg.slices[0][0].weight, state["features.0.weight"])
    assert torch.equal(vgg.slices[4][7].bias, state["features.28.bias"])
    assert not any(p.requires_grad for p in vgg.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = vgg(x)
    assert [f.shape[1:] for f in feats] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    # the [-1, 1] image goes in as it is (no ImageNet mean/std), as in the reference
    relu1_1 = F.relu(F.conv2d(x, state["features.0.weight"], state["features.0.bias"], padding=1))
    torch.testing.assert_close(feats[0], relu1_1)
    vgg.train()
    assert not vgg.training  # stays frozen

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert default_weights_path() == tmp_path / "torch" / "hub" / "checkpoints" / VGG19_FILE
    default_weights_path().parent.mkdir(parents=True)
    default_weights_path().write_bytes(vgg_file.read_bytes())
    assert VGG19Features().weights_file == str(default_weights_path())


def test_vgg_loss_equals_the_reference_formula_on_torchvisions_network(vgg_file):
    """sum_i w_i * L1(VGG_i(fake), VGG_i(real)) over relu1_1..relu5_1, images in [-1, 1] as they are."""
    from torchvision.models import vgg19

    state = torch.load(vgg_file, weights_only=True)
    net = vgg19(weights=None).features[:30].eval()  # up to relu5_1; the file holds no more
    net.load_state_dict({k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")})
    g = torch.Generator().manual_seed(3)
    fake, real = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    expected, x, y, start = 0.0, fake, real, 0
    with torch.no_grad():
        for weight, end in zip((1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0), (2, 7, 12, 21, 30), strict=True):
            x, y = net[start:end](x), net[start:end](y)
            expected += weight * (x - y).abs().mean().item()
            start = end
    assert VGGLoss(VGG19Features(vgg_file))(fake, real).item() == pytest.approx(expected, rel=1e-5)


def test_missing_vgg_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints" / VGG19_FILE
    with pytest.raises(VGGWeightsMissing) as err:
        VGG19Features()
    assert isinstance(err.value, FileNotFoundError)
    assert str(hub) in str(err.value) and "train.lambda_vgg: 0" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        VGG19Features(tmp_path / "elsewhere.pth")
    message = str(err.value)
    assert str(tmp_path / "elsewhere.pth") in message and str(hub) in message and "train.lambda_vgg: 0" in message


def test_a_file_that_is_not_vgg19_is_refused(tmp_path):
    torch.save({"features.0.weight": torch.zeros(64, 3, 5, 5)}, tmp_path / "bad.pth")
    with pytest.raises(
        ValueError, match=r"not torchvision's VGG19 state_dict .*features.0.weight has shape \(64, 3, 5, 5\)"
    ):
        VGG19Features(tmp_path / "bad.pth")


def test_trainer_uses_the_vgg_loss_when_weighted(vgg_file, tmp_path, monkeypatch):
    from gaugan.config import GauGANConfig
    from gaugan.trainer import GauGANTrainer, TrainOptions

    cfg = GauGANConfig(label_nc=3, ngf=4, ndf=4, nef=4, spade_hidden=8, n_layers_D=2, crop_size=32)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(VGGWeightsMissing, match="train.lambda_vgg: 0"):
        GauGANTrainer(cfg, TrainOptions(lambda_vgg=10.0))
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, TrainOptions(lambda_vgg=10.0, vgg_weights=str(vgg_file)))
    batch = {"label": torch.randint(0, 3, (2, 32, 32)), "image": torch.rand(2, 3, 32, 32) * 2 - 1}
    losses = trainer.train_step(batch)
    assert math.isfinite(losses["G_VGG"]) and losses["G_VGG"] > 0
    assert not any(p.requires_grad for p in trainer.vgg_loss.parameters())
