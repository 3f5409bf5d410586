"""synthesize() with a local generator file: sizes, raw label indices, instances, seeds, errors.

(Registered models, ``models:/NAME@champion``, are covered in test_registry.py against a real store.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_generator
from PIL import Image

from gaugan.classes import ClassTable
from gaugan.errors import InputError, UnknownColorError
from pipeline.errors import ModelNotFoundError

CLASSES = ClassTable(dataset="toy", names=("c0", "c1", "c2", "c3"), colors=tuple((60 * i, 0, 0) for i in range(4)))


def tiny_generator(path: Path, seed: int = 0, **overrides) -> Path:
    settings = {"use_instance": False, "nef": 4, **overrides}
    return write_tiny_generator(path, CLASSES, seed=seed, crop_size=64, **settings)


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
    from pipeline.serving.synthesize import synthesize

    out = synthesize(str(plain), label_png(tmp_path / "l.png", h, w), tmp_path / "deep/out.png")
    image = Image.open(out)
    assert image.mode == "RGB" and image.size == (w, h)
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["out.png"]  # atomic: no temporary left


def test_palette_png_is_read_as_raw_indices(plain, tmp_path):
    from pipeline.serving.synthesize import read_png, synthesize

    pal = label_png(tmp_path / "p.png", 64, 64, palette=True)
    gray = label_png(tmp_path / "g.png", 64, 64)
    assert Image.open(pal).mode == "P"
    np.testing.assert_array_equal(read_png(pal, "label map"), read_png(gray, "label map"))
    a = np.array(Image.open(synthesize(str(plain), pal, tmp_path / "a.png")))
    b = np.array(Image.open(synthesize(str(plain), gray, tmp_path / "b.png")))
    np.testing.assert_array_equal(a, b)


def test_instance_map_changes_the_image_and_label_stands_in_without_one(tmp_path):
    from pipeline.serving.synthesize import synthesize

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
    from pipeline.serving.synthesize import synthesize

    gen = tiny_generator(tmp_path / "vae.pt", seed=2, use_vae=True)
    lab = label_png(tmp_path / "l.png", 40, 40)  # resized to the fixed 64x64 and back
    images = [
        np.array(Image.open(synthesize(str(gen), lab, tmp_path / f"{i}.png", seed=s))) for i, s in enumerate([5, 5, 6])
    ]
    assert images[0].shape == (40, 40, 3)
    np.testing.assert_array_equal(images[0], images[1])
    assert not np.array_equal(images[0], images[2])


def test_a_map_painted_in_the_class_colours_gives_the_same_image(plain, tmp_path):
    from pipeline.serving.synthesize import synthesize

    labels = np.array(Image.open(label_png(tmp_path / "g.png", 48, 80)))
    labels[labels == 255] = 0  # class 0 is black here, the colour of dontcare: the palette cannot tell them apart
    gray, painted = tmp_path / "g.png", tmp_path / "painted.png"
    Image.fromarray(labels).save(gray)
    Image.fromarray(CLASSES.colorize(labels)).save(painted)
    a = np.array(Image.open(synthesize(str(plain), gray, tmp_path / "a.png")))
    b = np.array(Image.open(synthesize(str(plain), painted, tmp_path / "b.png")))
    np.testing.assert_array_equal(a, b)
    smudged = np.array(Image.open(painted))
    smudged[10, 10:14] = (185, 3, 0)  # antialiasing: not a class colour
    Image.fromarray(smudged).save(painted)
    with pytest.raises(UnknownColorError, match=r"\(185, 3, 0\) on 4 pixels \(nearest class: 3 'c3' \(180, 0, 0\)\)"):
        synthesize(str(plain), painted, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_clear_errors(plain, tmp_path):
    from pipeline.serving.synthesize import synthesize

    bad = np.zeros((32, 32), dtype=np.uint8)
    bad[0, :3] = [4, 9, 254]
    Image.fromarray(bad).save(tmp_path / "bad.png")
    with pytest.raises(
        InputError,
        match=r"label values 4, 9, 254 are outside the class table of 'toy': "
        r"allowed 0\.\.3 and 255 \(dontcare\)",
    ):
        synthesize(str(plain), tmp_path / "bad.png", tmp_path / "o.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="text.png: not a readable image"):
        synthesize(str(plain), tmp_path / "text.png", tmp_path / "o.png")
    with pytest.raises(FileNotFoundError, match="label map not found"):
        synthesize(str(plain), tmp_path / "missing.png", tmp_path / "o.png")
    ok = label_png(tmp_path / "ok.png", 32, 32)
    with pytest.raises(ModelNotFoundError, match="not a generator file, and not an MLflow model URI"):
        synthesize(str(tmp_path / "nope.pt"), ok, tmp_path / "o.png")
    label_png(tmp_path / "small.png", 16, 16)
    with pytest.raises(InputError, match="differ in size"):
        synthesize(str(plain), ok, tmp_path / "o.png", instance_path=tmp_path / "small.png")
    assert not (tmp_path / "o.png").exists()


def test_parse_registered_uris():
    from pipeline.registry.versions import parse_registered

    assert parse_registered("models:/gaugan-coco-stuff@champion") == ("gaugan-coco-stuff", "champion", None)
    assert parse_registered("models:/gaugan-ade20k/3") == ("gaugan-ade20k", None, "3")
    assert parse_registered("models:/m-0123abcd") is None
    assert parse_registered("runs:/abc/generator") is None


def test_folded_spectral_norm_gives_the_eval_forwards_images(tmp_path):
    import torch

    from gaugan.synthesizer import Synthesizer

    path = tiny_generator(tmp_path / "vae.pt", seed=3, use_vae=True, use_instance=True)
    hooked = Synthesizer.from_checkpoint(path, device="cpu")
    folded = Synthesizer.from_checkpoint(path, device="cpu", fold=True)
    n_hooks = sum(1 for m in hooked.netG.modules() for _ in m._forward_pre_hooks.values())
    assert n_hooks > 0 and not [m for m in folded.netG.modules() if m._forward_pre_hooks]
    assert not [m for m in folded.netE.modules() if m._forward_pre_hooks]
    assert not any(k.endswith("weight_orig") for k in folded.netG.state_dict())
    labels = np.zeros((2, 64, 64), np.int64)
    labels[:, 20:] = 2
    labels[1, :, 30:] = 3
    style = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    a = hooked(labels, labels, style_images=style, seed=4)
    b = folded(labels, labels, style_images=style, seed=4)
    assert a.shape == (2, 3, 64, 64) and not a.is_inference()  # a normal tensor, free to change in place
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    pixels = folded.synthesize(labels, labels, seed=4).astype(int) - hooked.synthesize(labels, labels, seed=4)
    assert np.abs(pixels).max() <= 1  # float rounding (channels_last convolutions) may move a value by one
    assert folded.channels_last and folded.netG.conv_img.weight.is_contiguous(memory_format=torch.channels_last)


def test_style_image_samples_and_folders(tmp_path):
    from pipeline.serving.synthesize import synthesize_many

    gen = str(tiny_generator(tmp_path / "vae.pt", seed=2, use_vae=True))
    maps = tmp_path / "maps"
    maps.mkdir()
    label_png(maps / "a.png", 64, 64)
    lab = np.array(Image.open(maps / "a.png"))
    lab[lab == 255] = 0
    Image.fromarray(CLASSES.colorize(lab)).save(maps / "b.png")  # painted in the class colours
    (maps / "notes.txt").write_text("not a map")
    written = synthesize_many(gen, maps, tmp_path / "out", seed=9, n_samples=2)
    assert [p.name for p in written] == ["a-0.png", "a-1.png", "b-0.png", "b-1.png"]
    images = [np.array(Image.open(p)) for p in written]
    assert not np.array_equal(images[0], images[1])  # seeds 9 and 10
    again = synthesize_many(gen, maps / "a.png", tmp_path / "one.png", seed=10)
    np.testing.assert_array_equal(np.array(Image.open(again[0])), images[1])
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "s.jpg")
    styled = synthesize_many(gen, maps / "a.png", tmp_path / "st.png", seed=9, style_path=tmp_path / "s.jpg")
    assert not np.array_equal(np.array(Image.open(styled[0])), images[0])
    with pytest.raises(InputError, match="no style noise \\(use_vae off\\)"):
        synthesize_many(str(tiny_generator(tmp_path / "p.pt")), maps / "a.png", tmp_path / "x.png", n_samples=2)
    with pytest.raises(InputError, match="--out must be a folder"):
        synthesize_many(gen, maps, tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="style image not found"):
        synthesize_many(gen, maps, tmp_path / "o", style_path=tmp_path / "nope.jpg")


def test_the_command_takes_folders_and_samples(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    gen = str(tiny_generator(tmp_path / "vae.pt", seed=2, use_vae=True))
    maps = tmp_path / "maps"
    maps.mkdir()
    label_png(maps / "a.png", 64, 64)
    label_png(maps / "b.png", 32, 48)
    args = ["synthesize", "--model", gen, "--label", str(maps), "--out", str(tmp_path / "out"), "--seed", "1"]
    result = CliRunner().invoke(app, [*args, "--n-samples", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote 6 images" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{s}-{k}.png" for s in "ab" for k in range(3)]
    assert Image.open(tmp_path / "out/b-2.png").size == (48, 32)
    result = CliRunner().invoke(app, [*args[:-2], "--style-image", str(tmp_path / "none.jpg")])
    assert result.exit_code == 1 and "style image not found" in result.output
