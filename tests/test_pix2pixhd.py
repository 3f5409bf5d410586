"""The pix2pixHD generator family (model.netG: pix2pixhd): the reference's key layout, the settings
it refuses, the uniform-map argument, and the pipeline around it (export, serving, new classes).

The key layout is checked against ``tests/fixtures/pix2pixhd_reference_keys.json``: the state-dict
keys and shapes of NVlabs/SPADE's ``Pix2PixHDGenerator`` for four settings, listed by running the
reference's code (the file names the commit).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config, toy_classes, train_options

from gaugan.checkpoint import load_generator, save_generator
from gaugan.config import GauGANConfig
from gaugan.encoding import encode_labels
from gaugan.errors import ConfigError
from gaugan.growth import grow_state
from gaugan.networks import build_generator, parameter_counts
from gaugan.pix2pixhd import Pix2PixHDGenerator
from gaugan.synthesizer import Synthesizer
from gaugan.trainer import GauGANTrainer

REFERENCE_KEYS = Path(__file__).parent / "fixtures" / "pix2pixhd_reference_keys.json"


def pix2pixhd(**kw) -> GauGANConfig:
    base = dict(netG="pix2pixhd", norm_G="spectralinstance", resnet_n_downsample=2, resnet_n_blocks=2)
    return tiny_config(**{**base, **kw})


@pytest.mark.parametrize("name", sorted(json.loads(REFERENCE_KEYS.read_text())["networks"]))
def test_the_state_dict_has_the_reference_keys_and_shapes(name):
    norm, down, blocks = name.split("-")
    config = GauGANConfig(
        label_nc=5,
        use_instance=True,
        ngf=4,
        netG="pix2pixhd",
        norm_G=norm,
        resnet_n_downsample=int(down),
        resnet_n_blocks=int(blocks),
        crop_size=64,
    )
    ours = {k: list(v.shape) for k, v in Pix2PixHDGenerator(config).state_dict().items()}
    assert ours == json.loads(REFERENCE_KEYS.read_text())["networks"][name]


@pytest.mark.parametrize(
    "change,fragment",
    [
        (dict(norm_G="spectralspadesyncbatch3x3"), "is a SPADE norm, which the pix2pixhd generator does not have"),
        (dict(use_vae=True), "takes no style code; set use_vae false"),
        (dict(crop_size=66), "is not a multiple of 4, which resnet_n_downsample 2 needs"),
        (dict(resnet_kernel_size=4), "resnet_kernel_size must be odd"),
        (dict(netG="pix2pix"), "netG must be one of ['spade', 'pix2pixhd']"),
    ],
)
def test_settings_the_family_cannot_use_are_refused_naming_them(change, fragment):
    with pytest.raises(ConfigError) as err:
        pix2pixhd(**change)
    assert fragment in str(err.value)


def uniform_maps(config: GauGANConfig) -> torch.Tensor:
    """One encoded map per class, each of that class alone (no edges)."""
    labels = torch.arange(config.label_nc).view(-1, 1, 1).expand(-1, 64, 64)
    edges = torch.zeros(config.label_nc, 1, 64, 64) if config.use_instance else None
    return encode_labels(labels, config.label_nc, config.contain_dontcare_label, edges)


def trained(config: GauGANConfig, steps: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    trainer = GauGANTrainer(config, train_options(total_steps=steps))
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        labels = torch.randint(0, config.label_nc, (2, 64, 64), generator=g)
        batch = {"label": labels, "image": torch.rand(2, 3, 64, 64, generator=g) * 2 - 1}
        if config.use_instance:
            batch["edge"] = torch.zeros(2, 1, 64, 64)
        trainer.train_step(batch)
    assert trainer.step == steps
    return trainer.inference_generator()[0].eval()


@pytest.mark.parametrize("state", ["untrained", "trained"])
def test_on_a_map_of_one_class_the_first_instance_norm_erases_the_class(state):
    """The paper's argument, where it holds exactly: the first convolution's output on a one-class map
    is constant over the image (reflection padding), so its instance norm is zero up to rounding for
    every class, while the activation before it is of order one and differs by class.

    The images themselves are not the same numerically: the rounding residue (~1e-3 here) meets the
    zero padding of the next stride-2 convolution, and the next instance norm scales that pattern
    back to order one (an untrained tiny generator's images from one-class maps differ by up to 1.7).
    """
    config = pix2pixhd()
    torch.manual_seed(0)
    netG = build_generator(config).eval() if state == "untrained" else trained(config)
    maps = uniform_maps(config)
    first_conv, first_norm = netG.model[1][0], netG.model[1][1]
    with torch.no_grad():
        before = first_conv(netG.model[0](maps))
        after = first_norm(before)
    assert (before - before[:1]).abs().amax() > 0.1  # the classes differ going in
    spread = before.flatten(2).std(dim=2)  # constant over the image, each class and channel
    assert spread.amax() <= 1e-5 * before.abs().amax()
    assert after.abs().amax() < 1e-2  # ... and normalized away: zeros up to rounding


def test_spade_keeps_the_class_of_a_one_class_map():
    """SPADE modulates with the map itself after normalizing: one-class maps give different images."""
    config = tiny_config(norm_G="spectralspadeinstance3x3")
    torch.manual_seed(0)
    with torch.no_grad():
        images = build_generator(config).eval()(uniform_maps(config))
    assert (images - images[:1]).abs().flatten(1).amax(dim=1)[1:].min() > 1e-2


def test_export_serve_and_count_like_any_model(tmp_path):
    config = pix2pixhd(use_instance=True)
    torch.manual_seed(0)
    netG = build_generator(config).eval()
    path = tmp_path / "g.pt"
    save_generator(path, netG, None, config, toy_classes(), {"steps": 0})
    loaded = load_generator(path)
    assert isinstance(loaded.netG, Pix2PixHDGenerator) and loaded.config.netG == "pix2pixhd"
    labels = np.zeros((1, 50, 70), np.int64)
    labels[:, 20:] = 2
    synth = Synthesizer.from_checkpoint(path, device="cpu", fold=True)
    image = synth.synthesize(labels, labels)
    assert image.shape == (1, 50, 70, 3)
    plain = Synthesizer.from_checkpoint(path, device="cpu").synthesize(labels, labels)
    assert np.abs(image.astype(int) - plain).max() <= 1  # spectral norm folded: the same image
    counts = parameter_counts(config)
    assert counts["G"] == sum(p.numel() for p in netG.parameters()) and "E" not in counts


def test_new_classes_grow_the_first_convolution_and_keep_the_function():
    """Growing the label input (a fine-tune with new classes): on the parent's classes the grown
    generator computes the parent's images, spectral norm's power vector grown with the weights."""
    parent_cfg, child_cfg = pix2pixhd(label_nc=4), pix2pixhd(label_nc=6)
    torch.manual_seed(0)
    parent = build_generator(parent_cfg).eval()
    index = [0, 1, 2, 3, 6]  # classes, then dontcare after the two new classes (no instance channel)
    child = build_generator(child_cfg).eval()
    child.load_state_dict(grow_state(parent.state_dict(), index, child_cfg.semantic_nc))
    labels = torch.randint(0, 4, (2, 64, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = parent(encode_labels(labels, 4, True, None))
        got = child(encode_labels(labels, 6, True, None))
    assert torch.allclose(got, want, atol=1e-5)


def test_a_reference_pix2pixhd_checkpoint_imports_with_its_options(tmp_path):
    """A NVlabs/SPADE ``--netG pix2pixhd`` folder (its key layout, checked above against the
    reference's own state dict): the options are read off the shapes and checked against opt.txt."""
    from test_reference_import import write_opt_txt

    from gaugan.config import reference_setting
    from pipeline.errors import ReferenceImportError
    from pipeline.parents.reference_import import import_reference

    options = dict(netG="pix2pixhd", norm_G="spectralinstance", resnet_n_downsample=2, resnet_n_blocks=2)
    config = GauGANConfig(**{**reference_setting("coco-stuff").to_dict(), "ngf": 4, **options})
    torch.manual_seed(3)
    reference = Pix2PixHDGenerator(config).eval()
    folder = tmp_path / "coco_pix2pixhd"
    folder.mkdir()
    torch.save(reference.state_dict(), folder / "latest_net_G.pth")
    write_opt_txt(folder / "opt.txt", "coco-stuff", config, **options)
    summary = import_reference("coco-stuff", folder, tmp_path / "imported.pt")
    loaded = load_generator(tmp_path / "imported.pt")
    assert isinstance(loaded.netG, Pix2PixHDGenerator) and summary is not None
    assert (loaded.config.resnet_n_downsample, loaded.config.resnet_n_blocks, loaded.config.norm_G) == (
        2,
        2,
        "spectralinstance",
    )
    maps = torch.zeros(1, config.semantic_nc, 64, 64)
    maps[:, 5] = 1
    with torch.no_grad():
        assert torch.equal(loaded.netG(maps), reference(maps))
    write_opt_txt(folder / "opt.txt", "coco-stuff", config, **{**options, "resnet_n_blocks": 9})
    with pytest.raises(ReferenceImportError, match=r"opt.txt resnet_n_blocks is '9', .* say 2"):
        import_reference("coco-stuff", folder, tmp_path / "refused.pt")
