"""The gaugan model library on tiny settings: shapes, reference layout, losses, gradients, SPADE's point."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from gaugan.checkpoint import load_generator, load_reference_checkpoint, save_generator
from gaugan.config import GauGANConfig, parameter_counts, reference_setting
from gaugan.discriminator import MultiscaleDiscriminator
from gaugan.encoder import ConvEncoder
from gaugan.encoding import encode_labels
from gaugan.generator import SPADEGenerator
from gaugan.losses import feature_matching_loss, hinge_d_loss, hinge_g_loss, kl_loss
from gaugan.synthesizer import Synthesizer
from gaugan.trainer import GauGANTrainer, NonFiniteLossError, TrainOptions

KEYS_FILE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "spade_checkpoint_keys.md"


def tiny(**kw) -> GauGANConfig:
    base = dict(label_nc=5, ngf=4, ndf=4, nef=4, z_dim=8, spade_hidden=8, n_layers_D=2, crop_size=64,
                norm_G="spectralspadeinstance3x3")
    base.update(kw)
    return GauGANConfig(**base)


def semantics_for(cfg: GauGANConfig, b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, cfg.label_nc, (b, h, w), generator=g)
    edges = torch.zeros(b, 1, h, w) if cfg.use_instance else None
    return encode_labels(label, cfg.label_nc, cfg.contain_dontcare_label, edges)


# ------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("mode,size", [("normal", 64), ("more", 128), ("most", 256)])
def test_upsampling_modes_give_the_input_size(mode, size):
    cfg = tiny(num_upsampling_layers=mode, crop_size=size)
    out = SPADEGenerator(cfg)(semantics_for(cfg, 1, size, size))
    assert out.shape == (1, 3, size, size)
    assert out.abs().max() <= 1.0


def test_non_square_inputs_and_edges():
    cfg = tiny(use_instance=True)
    sem = semantics_for(cfg, 1, 64, 128)
    assert sem.shape[1] == cfg.label_nc + 2  # classes + dontcare + edge
    assert SPADEGenerator(cfg)(sem).shape == (1, 3, 64, 128)
    preds = MultiscaleDiscriminator(cfg)(torch.cat([sem, torch.zeros(1, 3, 64, 128)], 1))
    assert len(preds) == cfg.num_D and len(preds[0]) == cfg.n_layers_D + 1


def test_vae_generator_and_encoder_shapes():
    cfg = tiny(use_vae=True, crop_size=64, aspect_ratio=2.0)
    mu, logvar = ConvEncoder(cfg)(torch.zeros(3, 3, 32, 64))
    assert mu.shape == logvar.shape == (3, cfg.z_dim)
    out = SPADEGenerator(cfg)(semantics_for(cfg, 3, 32, 64), torch.zeros(3, cfg.z_dim))
    assert out.shape == (3, 3, 32, 64)


def test_label_encoding_maps_255_to_dontcare_and_rejects_unknown_values():
    label = torch.tensor([[[0, 4, 255]]])
    enc = encode_labels(label, 5, True)
    assert enc.shape == (1, 6, 1, 3)
    assert enc[0, :, 0, 2].tolist() == [0, 0, 0, 0, 0, 1]
    assert enc.sum(1).eq(1).all()
    with pytest.raises(ValueError, match="label value 7 is outside the class table"):
        encode_labels(torch.tensor([[[7]]]), 5, True)


# ------------------------------------------------------------------------------------ reference layout
def _reference_keys() -> dict:
    text = KEYS_FILE.read_text()
    out = {}
    for section in re.split(r"^## setting ", text, flags=re.M)[1:]:
        head, *lines = section.strip().splitlines()
        name, net = re.match(r"(\S+) net (\w)", head).groups()
        out[(name, net)] = {ln.split("\t")[0]: tuple(int(v) for v in re.findall(r"\d+", ln.split("\t")[1]))
                            for ln in lines if "\t" in ln}
    return out


def test_state_dicts_match_the_reference_checkpoints_exactly():
    settings = {"ade20k": ("ade20k", False), "coco": ("coco-stuff", False), "cityscapes": ("cityscapes", False),
                "ade20k-vae": ("ade20k", True)}
    expected = _reference_keys()
    assert len(expected) == 9
    for (setting, net), keys in expected.items():
        cfg = reference_setting(*settings[setting])
        module = {"G": SPADEGenerator, "D": MultiscaleDiscriminator, "E": ConvEncoder}[net](cfg)
        got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert got == keys, f"{setting} {net}"


def test_reference_checkpoint_loads_strictly_and_round_trips(tmp_path):
    cfg = tiny(use_instance=True)
    src = SPADEGenerator(cfg)
    torch.save(src.state_dict(), tmp_path / "latest_net_G.pth")
    dst = SPADEGenerator(cfg)
    load_reference_checkpoint(dst, tmp_path / "latest_net_G.pth")
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])
    with pytest.raises(ValueError, match="does not match SPADEGenerator: missing keys .*up_4"):
        load_reference_checkpoint(SPADEGenerator(tiny(num_upsampling_layers="most", crop_size=128)), tmp_path / "latest_net_G.pth")


def test_parameter_counts_match_the_reference():
    assert parameter_counts(reference_setting("ade20k"))["G"] == 96492483
    assert parameter_counts(reference_setting("coco-stuff"))["D"] == 5904514


# ------------------------------------------------------------------------------------ losses
def test_losses_against_hand_computed_values():
    fake = [[torch.tensor([[0.5]]), torch.tensor([[-2.0, 0.5]])], [torch.tensor([[1.0]]), torch.tensor([[3.0]])]]
    real = [[torch.tensor([[1.5]]), torch.tensor([[0.0, 2.0]])], [torch.tensor([[0.0]]), torch.tensor([[-1.0]])]]
    # D fake: scale0 mean(relu(1-2), relu(1.5)) = 0.75; scale1 relu(4) = 4 -> mean 2.375
    assert hinge_d_loss(fake, real=False).item() == pytest.approx(2.375)
    # D real: scale0 mean(relu(1), relu(-1)) = 0.5; scale1 relu(2) = 2 -> 1.25
    assert hinge_d_loss(real, real=True).item() == pytest.approx(1.25)
    # G: -mean per scale: scale0 0.75, scale1 -3 -> -1.125
    assert hinge_g_loss(fake).item() == pytest.approx(-1.125)
    # FM: first features only: |0.5-1.5| and |1-0| -> (1 + 1) * 10 / 2
    assert feature_matching_loss(fake, real, 10.0).item() == pytest.approx(10.0)
    mu, logvar = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    # sample 0: -0.5 * (1 - 1 - 1 + 1 - 0 - 1) = 0.5; sample 1: -0.5 * (2 - e + 1 - 1) = 0.5*(e - 2)
    assert kl_loss(mu, logvar).item() == pytest.approx((0.5 + 0.5 * (torch.e - 2)) / 2, rel=1e-5)


def test_vgg_weights_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vgg19-dcbb9e9d\.pth.*train\.lambda_vgg: 0"):
        GauGANTrainer(tiny(), TrainOptions(lambda_vgg=10, vgg_weights=str(tmp_path / "nope.pth")))


def test_vgg_loss_loads_a_weights_file(tmp_path):
    from torchvision.models import vgg19

    torch.manual_seed(0)
    torch.save(vgg19(weights=None).state_dict(), tmp_path / "vgg19.pth")
    trainer = GauGANTrainer(tiny(), TrainOptions(lambda_vgg=10, vgg_weights=str(tmp_path / "vgg19.pth")))
    losses = trainer.train_step(_batch(tiny()))
    assert losses["G_VGG"] > 0


# ------------------------------------------------------------------------------------ training
def _batch(cfg: GauGANConfig, b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {"label": torch.randint(0, cfg.label_nc, (b, 64, 64), generator=g),
             "image": torch.rand(b, 3, 64, 64, generator=g) * 2 - 1}
    if cfg.use_instance:
        batch["edge"] = (torch.rand(b, 1, 64, 64, generator=g) > 0.9).float()
    return batch


def test_gradients_reach_every_parameter():
    cfg = tiny(use_vae=True, use_instance=True)
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, TrainOptions(lambda_vgg=0))
    batch = _batch(cfg)
    _, fake = trainer.generator_step(batch)
    no_grad = [n for n, p in trainer.generator.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []
    trainer.discriminator_step(batch, fake)
    no_grad = [n for n, p in trainer.discriminator.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_training_is_deterministic_under_a_seed_and_resumes_exactly():
    cfg = tiny(use_instance=True)

    def run(steps, state=None):
        torch.manual_seed(0)
        t = GauGANTrainer(cfg, TrainOptions(lambda_vgg=0, total_steps=4, decay_start_step=2, ema_decay=0.9))
        if state is not None:
            t.load_state_dict(state)
        for s in range(t.step, steps):
            t.train_step(_batch(cfg, seed=s))
        return t

    a, b = run(4), run(4)
    half = run(2)
    resumed = run(4, half.state_dict())
    for other in (b, resumed):
        for k, v in a.state_dict()["G"].items():
            assert torch.equal(v, other.state_dict()["G"][k]), k
        for k, v in a.state_dict()["ema"].items():
            assert torch.equal(v, other.state_dict()["ema"][k]), k
    assert a.opt_G.param_groups[0]["lr"] == 0.0  # linear decay reached zero at total_steps


def test_nan_loss_raises_before_any_update():
    cfg = tiny()
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, TrainOptions(lambda_vgg=0))
    before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    batch = _batch(cfg)
    batch["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 1"):
        trainer.train_step(batch)
    for k, v in trainer.generator.state_dict().items():
        if v.is_floating_point() and not k.endswith(("weight_u", "weight_v")):
            assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------------------------ SPADE's argument
def test_spade_keeps_the_semantics_that_instance_norm_washes_away():
    """The paper's argument (Sec. 3): a uniform label map fed only at the input is erased by the
    first normalization, so every class gives the same activations; SPADE re-injects the map.

    Checked where it is exact: right after the input layer and the first normalization. (Deeper,
    all-zero activations turn float rounding into noise that later normalizations rescale, and
    zero padding leaks a border pattern, so a whole plain network is not bit-identical there.)
    The input layer is a 1x1 conv here, so padding cannot leak the class into a spatial pattern.
    """
    cfg = tiny(norm_G="spadeinstance3x3", label_nc=3)
    uniform = [encode_labels(torch.full((1, 64, 64), c), 3, True) for c in (0, 2)]
    torch.manual_seed(0)
    spade = SPADEGenerator(cfg).eval()
    with torch.no_grad():
        a, b = spade(uniform[0]), spade(uniform[1])
        input_layer = nn.Conv2d(cfg.semantic_nc, 16 * cfg.ngf, 1)
        first = [input_layer(nn.functional.interpolate(s, size=(4, 4))) for s in uniform]
        plain = [spade.head_0.norm_0.param_free_norm(f) for f in first]
        modulated = [spade.head_0.norm_0(f, s) for f, s in zip(first, uniform)]
    assert (first[0] - first[1]).abs().max() > 1e-2  # the input layer does see the class...
    torch.testing.assert_close(plain[0], plain[1], atol=1e-3, rtol=0)  # ...plain instance norm erases it
    assert plain[0].abs().max() < 1e-3
    assert (modulated[0] - modulated[1]).abs().max() > 1e-2  # SPADE brings it back
    assert (a - b).abs().max() > 1e-2  # and the images differ


# ------------------------------------------------------------------------------------ files and inference
def test_generator_file_round_trip_and_synthesizer(tmp_path):
    cfg = tiny(use_instance=True, use_vae=True)
    torch.manual_seed(0)
    netG, netE = SPADEGenerator(cfg).eval(), ConvEncoder(cfg).eval()
    classes = {"dataset": "t", "label_nc": 5, "classes": [{"index": i, "name": str(i), "color": [i, i, i]} for i in range(5)]}
    save_generator(tmp_path / "g.pt", netG, netE, cfg, classes, {"run_id": "x"})
    loaded = load_generator(tmp_path / "g.pt")
    assert loaded.config == cfg and loaded.classes == classes and loaded.meta == {"run_id": "x"}
    synth = Synthesizer.from_checkpoint(tmp_path / "g.pt", device="cpu")
    labels = torch.randint(0, 5, (3, 64, 64))
    one = synth(labels, instances=labels, seed=1, batch_size=2)
    again = synth(labels, instances=labels, seed=1)
    other = synth(labels, instances=labels, seed=2)
    assert one.shape == (3, 3, 64, 64)
    torch.testing.assert_close(one, again, atol=1e-4, rtol=0)  # batch size 2 vs 8: same images
    assert (one - other).abs().max() > 1e-2  # another seed, another style
    assert synth.to_uint8(one).dtype.name == "uint8"
    with pytest.raises(ValueError, match="trained with instance maps"):
        synth(labels)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable generator file"):
        load_generator(tmp_path / "bad.pt")


def test_batchnorm_setting_builds_plain_batchnorm_on_cpu():
    cfg = tiny(norm_G="spectralspadesyncbatch3x3")
    kinds = {type(m) for m in SPADEGenerator(cfg).modules()}
    assert nn.BatchNorm2d in kinds and nn.SyncBatchNorm not in kinds
