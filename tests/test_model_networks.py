"""gaugan networks on tiny settings: config, label encoding, SPADE, G/D/E shapes, SPADE's point."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import tiny_config
from torch.nn.utils.spectral_norm import SpectralNorm

from gaugan.config import GauGANConfig, reference_setting
from gaugan.discriminator import MultiscaleDiscriminator
from gaugan.encoder import ConvEncoder
from gaugan.encoding import encode_labels
from gaugan.generator import SPADEGenerator
from gaugan.layers import SPADE, SyncableBatchNorm2d, convert_sync_batchnorm, spectral_norm


def tiny(**kw) -> GauGANConfig:
    return tiny_config(**{"label_nc": 5, "norm_G": "spectralspadeinstance3x3", **kw})


def semantics(cfg: GauGANConfig, b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, cfg.label_nc, (b, h, w), generator=g)
    edges = (torch.rand(b, 1, h, w, generator=g) > 0.8).float() if cfg.use_instance else None
    return encode_labels(label, cfg.label_nc, cfg.contain_dontcare_label, edges)


# ------------------------------------------------------------------------------------ config
def test_config_channels_round_trip_and_errors():
    assert tiny().semantic_nc == 6
    assert tiny(use_instance=True).semantic_nc == 7
    assert tiny(contain_dontcare_label=False, use_instance=True).semantic_nc == 6
    assert [reference_setting(n).semantic_nc for n in ("ade20k", "coco-stuff", "cityscapes")] == [151, 184, 36]
    assert reference_setting("cityscapes").latent_hw == (4, 8)  # crop 512 / 2**6 ("more"), aspect 2: 8 wide, 4 high
    cfg = tiny(use_vae=True, aspect_ratio=2.0)
    assert GauGANConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown GauGAN config keys \['ngf_typo'\]"):
        GauGANConfig.from_dict({**cfg.to_dict(), "ngf_typo": 3})
    with pytest.raises(ValueError, match="needs label_nc"):
        GauGANConfig.from_dict({"ngf": 4})
    with pytest.raises(ValueError, match="num_upsampling_layers"):
        tiny(num_upsampling_layers="many")
    with pytest.raises(ValueError, match="norm_G 'spadegroup3x3'"):
        tiny(norm_G="spadegroup3x3")
    with pytest.raises(ValueError, match="reference setting 'imagenet'"):
        reference_setting("imagenet")


# ------------------------------------------------------------------------------------ label encoding
def test_label_encoding_one_hot_dontcare_edges_and_bad_values():
    label = torch.tensor([[[0, 4, 255], [2, 2, 1]]])
    edges = torch.tensor([[[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]]])
    enc = encode_labels(label, 5, True, edges)
    assert enc.shape == (1, 7, 2, 3) and enc.dtype == torch.float32
    assert enc[0, :6].argmax(0).tolist() == [[0, 4, 5], [2, 2, 1]]  # 255 -> channel label_nc
    assert enc[0, :6].sum(0).eq(1).all()
    assert torch.equal(enc[0, 6], edges[0, 0])
    with pytest.raises(ValueError, match="label value 7 is outside the class table"):
        encode_labels(torch.tensor([[[0, 7]]]), 5, True)
    with pytest.raises(ValueError, match="label value -1 "):
        encode_labels(torch.tensor([[[-1, 0]]]), 5, True)
    with pytest.raises(ValueError, match="label value 255 .*allowed values are 0..4$"):
        encode_labels(torch.tensor([[[255]]]), 5, False)  # no dontcare channel: 255 is an error
    with pytest.raises(ValueError, match="edge maps"):
        encode_labels(label, 5, True, torch.zeros(1, 1, 3, 3))


# ------------------------------------------------------------------------------------ SPADE layer
def test_spade_is_norm_times_one_plus_gamma_plus_beta_from_the_nearest_resized_map():
    torch.manual_seed(0)
    spade = SPADE("spadeinstance3x3", norm_nc=3, label_nc=2, hidden=4)
    x = torch.randn(1, 3, 4, 4) * 3 + 1
    seg = torch.zeros(1, 2, 8, 8)
    seg[:, 0, :, :4] = 1
    seg[:, 1, :, 4:] = 1
    out = spade(x, seg)
    normed = (x - x.mean((2, 3), keepdim=True)) / torch.sqrt(x.var((2, 3), unbiased=False, keepdim=True) + 1e-5)
    small = seg[:, :, ::2, ::2]  # nearest 8 -> 4 takes every other pixel
    actv = torch.relu(F.conv2d(small, spade.mlp_shared[0].weight, spade.mlp_shared[0].bias, padding=1))
    gamma = F.conv2d(actv, spade.mlp_gamma.weight, spade.mlp_gamma.bias, padding=1)
    beta = F.conv2d(actv, spade.mlp_beta.weight, spade.mlp_beta.bias, padding=1)
    torch.testing.assert_close(out, normed * (1 + gamma) + beta, atol=1e-5, rtol=1e-5)


def test_syncbatch_builds_batchnorm_and_converts_only_syncbatch_layers_sharing_their_tensors():
    cfg = tiny(norm_G="spectralspadesyncbatch3x3", norm_D="spectralbatch")
    netG, netD = SPADEGenerator(cfg), MultiscaleDiscriminator(cfg)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in netG.modules())  # runs on CPU as built
    n_sync = sum(isinstance(m, SyncableBatchNorm2d) for m in netG.modules())
    assert n_sync == 7 * 2 + 4  # two SPADEs per block, plus norm_s in the four up blocks
    before = {k: v.data_ptr() for k, v in netG.state_dict().items()}
    converted = convert_sync_batchnorm(netG)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == n_sync
    assert {k: v.data_ptr() for k, v in converted.state_dict().items()} == before  # same keys, same tensors
    convert_sync_batchnorm(netD)  # 'batch' (not 'syncbatch') stays per-process BatchNorm
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in netD.modules())
    assert any(type(m) is nn.BatchNorm2d for m in netD.modules())


def test_spectral_norm_keeps_its_reference_keys_and_normalises_the_weight():
    torch.manual_seed(0)
    conv = spectral_norm(nn.Conv2d(3, 8, 3))
    assert sorted(conv.state_dict()) == ["bias", "weight_orig", "weight_u", "weight_v"]
    for _ in range(30):  # power iterations converge during training forwards
        conv(torch.zeros(1, 3, 5, 5))
    sigma = torch.linalg.matrix_norm(conv.weight.detach().reshape(8, -1), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=1e-3)


def test_spectral_norm_estimates_sigma_outside_autocast(monkeypatch):
    """Under (CUDA) fp16 autocast torch.mv would run in half precision: the hook turns autocast off."""
    seen = []
    original = SpectralNorm.compute_weight

    def spy(self, module, do_power_iteration):
        seen.append(torch.is_autocast_enabled("cpu"))
        return original(self, module, do_power_iteration)

    monkeypatch.setattr(SpectralNorm, "compute_weight", spy)
    conv = spectral_norm(nn.Conv2d(3, 4, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(torch.randn(1, 3, 8, 8))
    assert seen == [False] and out.dtype == torch.bfloat16  # the conv itself still runs in bf16
    assert conv.weight.dtype == torch.float32


# ------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("mode,size,latent", [("normal", 64, 2), ("more", 128, 2), ("most", 256, 2)])
def test_upsampling_modes(mode, size, latent):
    cfg = tiny(num_upsampling_layers=mode, crop_size=size)
    netG = SPADEGenerator(cfg)
    assert netG.latent_size(size, size) == (latent, latent)
    assert hasattr(netG, "up_4") == (mode == "most")
    out = netG(semantics(cfg, 2, size, size))
    assert out.shape == (2, 3, size, size)
    assert out.abs().max() <= 1.0 and out.std() > 0


def test_non_square_inputs_with_edges_through_generator_and_discriminator():
    cfg = tiny(use_instance=True, n_layers_D=3, norm_G="spectralspadesyncbatch3x3")
    netG, netD = SPADEGenerator(cfg), MultiscaleDiscriminator(cfg)
    for h, w in ((64, 128), (96, 64)):
        sem = semantics(cfg, 2, h, w)
        assert sem.shape[1] == cfg.label_nc + 2  # classes + dontcare + edge
        fake = netG(sem)
        assert fake.shape == (2, 3, h, w)
        preds = netD(torch.cat([sem, fake], 1))
        assert len(preds) == cfg.num_D and all(len(p) == cfg.n_layers_D + 1 for p in preds)
        assert [f.shape[1] for f in preds[0]] == [4, 8, 16, 1]
        # 4x4 convs with padding 2 (size n -> n//2 + 1 at stride 2, n + 1 at stride 1): strides 2, 2, 1, 1;
        # the second scale sees the input average-pooled to half size
        assert preds[0][-1].shape[2:] == (h // 4 + 3, w // 4 + 3)
        assert preds[1][-1].shape[2:] == (h // 8 + 3, w // 8 + 3)
    with pytest.raises(ValueError, match="not a multiple of 32"):
        netG(semantics(cfg, 1, 48, 64))


def test_vae_generator_encoder_and_other_sizes():
    cfg = tiny(use_vae=True, aspect_ratio=2.0)  # crop 64 wide, 32 high: first map 1x2 from z
    netG, netE = SPADEGenerator(cfg), ConvEncoder(cfg)
    assert netG.fc.out_features == 16 * cfg.ngf * 1 * 2
    mu, logvar = netE(torch.rand(3, 3, 32, 64) * 2 - 1)
    assert mu.shape == logvar.shape == (3, cfg.z_dim)
    z = torch.randn(3, cfg.z_dim)
    sem = semantics(cfg, 3, 32, 64)
    out = netG(sem, z)
    assert out.shape == (3, 3, 32, 64)
    assert (netG(sem, torch.randn(3, cfg.z_dim)) - out).abs().max() > 1e-3  # z matters
    assert netG(semantics(cfg, 1, 64, 128), z[:1]).shape == (1, 3, 64, 128)  # first map resized to fit
    assert netG(sem).shape == (3, 3, 32, 64)  # no z: a random style
    big = ConvEncoder(tiny(use_vae=True, crop_size=256))
    assert hasattr(big, "layer6") and big(torch.zeros(1, 3, 100, 60))[0].shape == (1, cfg.z_dim)


def test_seeded_construction_is_deterministic():
    cfg = tiny(use_vae=True, use_instance=True)

    def build():
        torch.manual_seed(3)
        return [m.state_dict() for m in (SPADEGenerator(cfg), MultiscaleDiscriminator(cfg), ConvEncoder(cfg))]

    for a, b in zip(build(), build(), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ the paper's argument
def test_spade_keeps_the_semantics_that_plain_instance_norm_washes_away():
    """Paper, Sec. 3: a uniform label map fed only at the input gives a uniform activation, which
    the first instance norm turns into zeros whatever the class; SPADE re-injects the map.

    The same generator is built twice: with SPADE, and with plain instance norm (norm_G 'instance':
    the map reaches the input layer only). Two adjustments make the real-number argument exact in
    floating point, applied to both networks alike:
    - the input layer keeps only its centre taps: with zero padding a 3x3 conv writes the class
      into a border pattern, an artefact unrelated to the argument;
    - the input layer's weights and every bias are rounded to multiples of 1/256, and the norms'
      eps is 2**-16 (1/sqrt(eps) = 256), so that a constant map normalises to exact zeros in
      float64. Otherwise the rounding residue of the erased class (~1e-17) is amplified by up to
      1/sqrt(eps) at each later norm of a near-constant map, and after a dozen norms it is O(1).
    """
    spade_cfg = tiny(norm_G="spadeinstance3x3", label_nc=3)
    plain_cfg = tiny(norm_G="instance", label_nc=3)
    maps = [encode_labels(torch.full((1, 64, 64), c), 3, True).double() for c in (0, 2)]
    outputs = {}
    for name, cfg in (("spade", spade_cfg), ("plain", plain_cfg)):
        torch.manual_seed(0)
        net = SPADEGenerator(cfg).double().eval()
        with torch.no_grad():
            centre = net.fc.weight[:, :, 1, 1].clone()
            net.fc.weight.zero_()
            net.fc.weight[:, :, 1, 1] = centre
            for pname, p in net.named_parameters():
                if pname.endswith("bias") or pname == "fc.weight":
                    p.copy_(torch.round(p * 256) / 256)
            for module in net.modules():
                if isinstance(module, nn.InstanceNorm2d):
                    module.eps = 2.0**-16
            first = [net.fc(F.interpolate(m, size=(2, 2))) for m in maps]
            outputs[name] = [net(m) for m in maps]
        assert (first[0] - first[1]).abs().max() > 1e-2  # the input layer does see the class
    assert not any(isinstance(m, SPADE) for m in SPADEGenerator(plain_cfg).modules())
    plain_a, plain_b = outputs["plain"]
    spade_a, spade_b = outputs["spade"]
    assert torch.equal(plain_a, plain_b)  # the class is gone after the first norm
    assert (spade_a - spade_b).abs().max() > 0.05  # SPADE brings it back at every block
