"""synthesize() with a local generator file: sizes, raw label indices, instances, seeds, errors.

(Registered models, ``models:/NAME@champion``, are covered in test_registry.py against a real store.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = {
    "dataset": "toy",
    "label_nc": 4,
    "classes": [{"index": i, "name": f"c{i}", "color": [60 * i, 0, 0]} for i in range(4)],
}


def tiny_generator(path: Path, seed: int = 0, **overrides) -> Path:
    import torch

    from gaugan.checkpoint import save_generator
    from gaugan.config import GauGANConfig
    from gaugan.encoder import ConvEncoder
    from gaugan.generator import SPADEGenerator

    settings = dict(label_nc=4, use_instance=False, ngf=4, nef=4, z_dim=8, spade_hidden=8, crop_size=64)
    settings.update(overrides)
    config = GauGANConfig(**settings)
    torch.manual_seed(seed)
    netE = ConvEncoder(config) if config.use_vae else None
    save_generator(path, SPADEGenerator(config), netE, config, CLASSES, {"steps": 0})
    return path


def label_png(path: Path, h: int, w: int, palette: bool = False) -> Path:
    lab = np.zeros((h, w), dtype=np.uint8)
    lab[h // 2 :, :] = 1
    lab[:, w // 2 :] = 3
    lab[:4, :4] = 255
    im = Image.fromarray(lab)
    if palette:  # colours that are not the indices: only the raw indices may be read
        im = im.convert("P")
        im.putpalette([255 - i % 256 for i in range(768)])
    im.save(path)
    return path


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return tiny_generator(tmp_path_factory.mktemp("gen") / "g.pt")


@pytest.mark.parametrize("h,w", [(64, 64), (48, 80), (50, 37)])
def test_output_has_the_label_maps_size(plain, tmp_path, h, w):
    from pipeline.synthesize import synthesize

    out = synthesize(str(plain), label_png(tmp_path / "l.png", h, w), tmp_path / "deep/out.png")
    image = Image.open(out)
    assert image.mode == "RGB" and image.size == (w, h)
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["out.png"]  # atomic: no temporary left


def test_palette_png_is_read_as_raw_indices(plain, tmp_path):
    from pipeline.synthesize import read_map, synthesize

    pal = label_png(tmp_path / "p.png", 64, 64, palette=True)
    gray = label_png(tmp_path / "g.png", 64, 64)
    assert Image.open(pal).mode == "P"
    np.testing.assert_array_equal(read_map(pal), read_map(gray))
    a = np.array(Image.open(synthesize(str(plain), pal, tmp_path / "a.png")))
    b = np.array(Image.open(synthesize(str(plain), gray, tmp_path / "b.png")))
    np.testing.assert_array_equal(a, b)


def test_instance_map_changes_the_image_and_label_stands_in_without_one(tmp_path):
    from pipeline.synthesize import synthesize

    gen = tiny_generator(tmp_path / "inst.pt", seed=1, use_instance=True)
    lab = label_png(tmp_path / "l.png", 64, 64)
    inst = np.zeros((64, 64), dtype=np.uint16)
    inst[10:30, 10:30] = 7  # an object boundary inside one class region
    Image.fromarray(inst).save(tmp_path / "i.png")
    with_inst = np.array(Image.open(synthesize(str(gen), lab, tmp_path / "a.png", instance_path=tmp_path / "i.png")))
    fallback = np.array(Image.open(synthesize(str(gen), lab, tmp_path / "b.png")))
    as_label = np.array(Image.open(synthesize(str(gen), lab, tmp_path / "c.png", instance_path=lab)))
    np.testing.assert_array_equal(fallback, as_label)
    assert not np.array_equal(with_inst, fallback)


def test_seed_fixes_the_style_of_a_multimodal_model(tmp_path):
    from pipeline.synthesize import synthesize

    gen = tiny_generator(tmp_path / "vae.pt", seed=2, use_vae=True)
    lab = label_png(tmp_path / "l.png", 40, 40)  # resized to the fixed 64x64 and back
    images = [
        np.array(Image.open(synthesize(str(gen), lab, tmp_path / f"{i}.png", seed=s))) for i, s in enumerate([5, 5, 6])
    ]
    assert images[0].shape == (40, 40, 3)
    np.testing.assert_array_equal(images[0], images[1])
    assert not np.array_equal(images[0], images[2])


def test_clear_errors(plain, tmp_path):
    from pipeline.synthesize import SynthesizeError, synthesize

    bad = np.zeros((32, 32), dtype=np.uint8)
    bad[0, :3] = [4, 9, 254]
    Image.fromarray(bad).save(tmp_path / "bad.png")
    with pytest.raises(
        SynthesizeError,
        match=r"label values 4, 9, 254 are outside the class table of 'toy': "
        r"allowed 0\.\.3 and 255 \(dontcare\)",
    ):
        synthesize(str(plain), tmp_path / "bad.png", tmp_path / "o.png")
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(SynthesizeError, match="one channel of indices"):
        synthesize(str(plain), tmp_path / "rgb.png", tmp_path / "o.png")
    with pytest.raises(FileNotFoundError, match="label map not found"):
        synthesize(str(plain), tmp_path / "missing.png", tmp_path / "o.png")
    ok = label_png(tmp_path / "ok.png", 32, 32)
    with pytest.raises(SynthesizeError, match="not a generator file, and not an MLflow model URI"):
        synthesize(str(tmp_path / "nope.pt"), ok, tmp_path / "o.png")
    label_png(tmp_path / "small.png", 16, 16)
    with pytest.raises(SynthesizeError, match="differ in size"):
        synthesize(str(plain), ok, tmp_path / "o.png", instance_path=tmp_path / "small.png")
    assert not (tmp_path / "o.png").exists()


def test_parse_registered_uris():
    from pipeline.synthesize import parse_registered

    assert parse_registered("models:/gaugan-coco-stuff@champion") == ("gaugan-coco-stuff", "champion", None)
    assert parse_registered("models:/gaugan-ade20k/3") == ("gaugan-ade20k", None, "3")
    assert parse_registered("models:/m-0123abcd") is None
    assert parse_registered("runs:/abc/generator") is None
