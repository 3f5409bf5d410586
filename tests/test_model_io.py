"""Generator files and the Synthesizer: round trip, clear errors, seeds, styles, instance edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, toy_classes

from gaugan.checkpoint import FORMAT, CheckpointError, load_generator, save_generator
from gaugan.config import GauGANConfig
from gaugan.edges import instance_edges_torch
from gaugan.encoder import ConvEncoder
from gaugan.encoding import encode_labels
from gaugan.generator import SPADEGenerator
from gaugan.synthesizer import Synthesizer, to_uint8

CLASSES = toy_classes()


def tiny(**kw) -> GauGANConfig:
    return tiny_config(**{"norm_G": "spectralspadeinstance3x3", **kw})


def saved(tmp_path, cfg: GauGANConfig, name: str = "g.pt", with_encoder: bool = True):
    torch.manual_seed(0)
    netG = SPADEGenerator(cfg).eval()
    netE = ConvEncoder(cfg).eval() if cfg.use_vae and with_encoder else None
    path = tmp_path / name
    save_generator(path, netG, netE, cfg, CLASSES, {"run_id": "abc", "step": 7})
    return path, netG, netE


def labels_and_instances(n: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, (n, 64, 64))
    labels[:, :8, :8] = 255
    instances = rng.integers(0, 3, (n, 64, 64))
    return labels, instances


# ------------------------------------------------------------------------------------ files
def test_generator_file_round_trip(tmp_path):
    cfg = tiny(use_vae=True, use_instance=True)
    path, netG, netE = saved(tmp_path, cfg)
    assert [p.name for p in tmp_path.iterdir()] == ["g.pt"]  # the temporary file was renamed, not left
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["config"] == cfg.to_dict() and raw["meta"]["step"] == 7
    loaded = load_generator(path)
    assert loaded.config == cfg and loaded.classes == CLASSES and loaded.meta == {"run_id": "abc", "step": 7}
    assert not loaded.netG.training and not loaded.netE.training
    sem = encode_labels(torch.randint(0, 4, (2, 64, 64)), 4, True, torch.zeros(2, 1, 64, 64))
    z = torch.randn(2, cfg.z_dim)
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.netG(sem, z), netG(sem, z))
        assert torch.equal(loaded.netE(image)[0], netE(image)[0])


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such generator file"):
        load_generator(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable generator file"):
        load_generator(tmp_path / "junk.pt")
    torch.save(SPADEGenerator(tiny()).state_dict(), tmp_path / "latest_net_G.pth")
    with pytest.raises(CheckpointError, match="not a GauGAN generator file.*load_reference_checkpoint"):
        load_generator(tmp_path / "latest_net_G.pth")
    torch.save({"format": "something-else/2"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="format 'something-else/2'"):
        load_generator(tmp_path / "other.pt")


# ------------------------------------------------------------------------------------ synthesizer
def test_synthesizer_matches_the_generator_and_uses_instance_edges(tmp_path):
    cfg = tiny(use_instance=True)
    path, netG, _ = saved(tmp_path, cfg)
    synth = Synthesizer.from_checkpoint(path)  # device 'auto': the CPU here
    assert synth.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    synth = Synthesizer.from_checkpoint(path, device="cpu")
    assert synth.config == cfg and synth.classes == CLASSES
    labels, instances = labels_and_instances()
    out = synth(labels, instances=instances, batch_size=2)
    assert out.shape == (3, 3, 64, 64) and out.dtype == torch.float32 and out.abs().max() <= 1
    edges = instance_edges_torch(torch.from_numpy(instances))
    with torch.no_grad():
        expected = netG(encode_labels(torch.from_numpy(labels), 4, True, edges))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)  # conv results vary slightly with batch size
    other_instances = np.zeros_like(instances)  # no boundaries: another edge channel, another image
    assert (synth(labels, instances=other_instances) - out).abs().max() > 1e-3
    single = synth(labels[0], instances=instances[0])  # [H,W] works too
    torch.testing.assert_close(single, out[:1], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="trained with instance maps"):
        synth(labels)
    with pytest.raises(ValueError, match="differ in shape"):
        synth(labels, instances=instances[:, :32])
    with pytest.raises(ValueError, match="label values 9 are outside the class table of 'toy': allowed 0..3 and 255"):
        synth(np.full((64, 64), 9), instances=instances[0])
    with pytest.raises(ValueError, match="no style encoder"):
        synth(labels, instances=instances, style_images=torch.zeros(3, 3, 64, 64))


def test_multimodal_synthesis_by_seed_and_by_style(tmp_path):
    cfg = tiny(use_vae=True)
    path, _, _ = saved(tmp_path, cfg)
    synth = Synthesizer.from_checkpoint(path, device="cpu")
    labels, _ = labels_and_instances(n=3)
    one = synth(labels, seed=1, batch_size=2)
    # the noise is drawn for the whole call: the batch size changes nothing but conv rounding
    torch.testing.assert_close(one, synth(labels, seed=1, batch_size=8), atol=1e-4, rtol=0)
    assert (one - synth(labels, seed=2)).abs().max() > 1e-2  # another seed, another style
    styles = torch.rand(3, 3, 64, 64) * 2 - 1
    styled = synth(labels, style_images=styles, seed=1)
    assert (styled - one).abs().max() > 1e-2
    as_uint8 = ((styles[:1] + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()[0]  # one HWC image for all
    broadcast = synth(labels, style_images=as_uint8, seed=1)
    expected = synth(
        labels,
        style_images=((torch.from_numpy(as_uint8).permute(2, 0, 1).float() / 127.5) - 1).expand(3, -1, -1, -1),
        seed=1,
    )
    torch.testing.assert_close(broadcast, expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="2 style images for 3 label maps"):
        synth(labels, style_images=styles[:2])
    no_encoder, _, _ = saved(tmp_path, cfg, "noenc.pt", with_encoder=False)
    with pytest.raises(ValueError, match="no style encoder"):
        Synthesizer.from_checkpoint(no_encoder, device="cpu")(labels, style_images=styles)


def test_synthesize_takes_any_size_colours_and_no_instance_map(tmp_path, caplog):
    cfg = tiny(use_instance=True)
    path, _, _ = saved(tmp_path, cfg)
    synth = Synthesizer.from_checkpoint(path, device="cpu")
    labels, instances = labels_and_instances(n=2)
    exact = synth.synthesize(labels, instances)
    np.testing.assert_array_equal(exact, to_uint8(synth(labels, instances=instances)))  # the size fits: no resizing
    odd = synth.synthesize(labels[:, :50, :45], instances[:, :50, :45])
    assert odd.shape == (2, 50, 45, 3) and odd.dtype == np.uint8
    # the size rule: the generator ran at its training size on the map resized (nearest) to it
    fitted = synth.fit_maps(torch.as_tensor(labels[:, :50, :45]))
    assert tuple(fitted.shape[-2:]) == synth.training_size
    ran = synth(fitted, instances=synth.fit_maps(torch.as_tensor(instances[:, :50, :45])))
    back = F.interpolate(ran, size=(50, 45), mode="bilinear", align_corners=False, antialias=True)
    np.testing.assert_array_equal(odd, to_uint8(back))
    thin = synth.synthesize(labels[:, :7, :], instances[:, :7, :])  # 7 rows: same rule, no error
    assert thin.shape == (2, 7, labels.shape[2], 3)
    for empty in (labels[:, :0], labels[:0], labels[:, :, :0]):  # found by the MLflow payload fuzz: was a RuntimeError
        with pytest.raises(ValueError, match="empty"):
            synth.synthesize(empty, empty)
    painted = CLASSES.colorize(labels)
    np.testing.assert_array_equal(synth.synthesize(synth.labels_from_colors(painted), instances), exact)
    with caplog.at_level("WARNING"):
        alone = synth.synthesize(labels)
    assert "using the label map as one" in caplog.text
    np.testing.assert_array_equal(alone, synth.synthesize(labels, labels))


def test_to_uint8():
    images = torch.tensor([-1.0, -0.5, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = to_uint8(images)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 5, 3)
    assert out[0, 0, :, 0].tolist() == [0, 64, 128, 255, 255]
    assert Synthesizer.to_uint8 is to_uint8
