"""The networks' state_dicts are exactly the NVlabs/SPADE checkpoints' (keys, order, shapes, counts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from gaugan.checkpoint import CheckpointError, load_reference_checkpoint
from gaugan.config import reference_setting
from gaugan.discriminator import MultiscaleDiscriminator
from gaugan.encoder import ConvEncoder
from gaugan.generator import SPADEGenerator
from gaugan.networks import parameter_counts

KEYS_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "spade_checkpoint_keys.md"
SETTINGS = {
    "ade20k": ("ade20k", False),
    "coco": ("coco-stuff", False),
    "cityscapes": ("cityscapes", False),
    "ade20k-vae": ("ade20k", True),
}
NETS = {"G": SPADEGenerator, "D": MultiscaleDiscriminator, "E": ConvEncoder}


def reference_layouts() -> dict[tuple[str, str], dict]:
    """{(setting, net): {"params": n, "entries": n, "keys": [(key, shape), ...]}} from the md file."""
    if not KEYS_FILE.is_file():
        pytest.fail(f"{KEYS_FILE} is missing: clone the project beside its shared/ folder")
    layouts = {}
    for section in re.split(r"^## setting ", KEYS_FILE.read_text(), flags=re.M)[1:]:
        head, *lines = section.strip().splitlines()
        m = re.fullmatch(r"(\S+) net (\w): (\d+) parameters, (\d+) state_dict entries", head.strip())
        assert m, head
        keys = []
        for line in lines:
            name, shape = line.split("\t")
            keys.append((name, tuple(int(v) for v in re.findall(r"\d+", shape))))
        layouts[(m.group(1), m.group(2))] = {"params": int(m.group(3)), "entries": int(m.group(4)), "keys": keys}
    return layouts


LAYOUTS = reference_layouts()


def test_the_reference_file_lists_every_setting():
    assert sorted(LAYOUTS) == sorted([(s, n) for s in SETTINGS for n in "GD"] + [("ade20k-vae", "E")])
    assert all(len(v["keys"]) == v["entries"] for v in LAYOUTS.values())


@pytest.mark.parametrize("setting,net", sorted(LAYOUTS))
def test_state_dict_matches_the_reference_checkpoint_exactly(setting, net):
    config = reference_setting(*SETTINGS[setting])
    with torch.device("meta"):  # shapes only: nothing allocated
        module = NETS[net](config)
    got = [(k, tuple(v.shape)) for k, v in module.state_dict().items()]
    expected = LAYOUTS[(setting, net)]["keys"]
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    assert got == expected  # same order too
    assert sum(p.numel() for p in module.parameters()) == LAYOUTS[(setting, net)]["params"]


def test_parameter_counts_for_model_info():
    for setting, (name, vae) in SETTINGS.items():
        counts = parameter_counts(reference_setting(name, use_vae=vae))
        assert counts["G"] == LAYOUTS[(setting, "G")]["params"]
        assert counts["D"] == LAYOUTS[(setting, "D")]["params"]
        assert ("E" in counts) == vae
    assert parameter_counts(reference_setting("ade20k", use_vae=True))["E"] == LAYOUTS[("ade20k-vae", "E")]["params"]


def test_reference_style_files_load_strictly_and_mismatches_are_listed(tmp_path):
    cfg = tiny_config(use_instance=True)
    torch.manual_seed(0)
    src = SPADEGenerator(cfg)
    src(torch.rand(2, cfg.semantic_nc, 64, 64))  # a training forward moves BN stats and spectral-norm vectors
    path = tmp_path / "latest_net_G.pth"
    torch.save(src.state_dict(), path)
    dst = load_reference_checkpoint(SPADEGenerator(cfg), path)
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())
    # a DataParallel-saved file (keys prefixed 'module.') loads too
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "dp.pth")
    load_reference_checkpoint(SPADEGenerator(cfg), tmp_path / "dp.pth")

    with pytest.raises(
        CheckpointError,
        match=r"does not match SPADEGenerator: 38 missing keys \(up_4\.conv_0\.bias, .*"
        r"0 unexpected keys; 1 shape mismatches \(conv_img\.weight",
    ):
        load_reference_checkpoint(
            SPADEGenerator(tiny_config(use_instance=True, num_upsampling_layers="most", crop_size=128)), path
        )
    with pytest.raises(
        CheckpointError,
        match=r"0 missing keys; 0 unexpected keys; 19 shape mismatches \(fc.weight: "
        r"\(64, 6, 3, 3\) in the file, \(64, 5, 3, 3\) here",
    ):
        load_reference_checkpoint(
            SPADEGenerator(tiny_config()), path
        )  # no edge channel: the input conv and 18 SPADE convs are narrower
    with pytest.raises(FileNotFoundError):
        load_reference_checkpoint(SPADEGenerator(cfg), tmp_path / "nope.pth")
