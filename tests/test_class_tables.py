"""Built-in class tables (coco-stuff, ade20k, cityscapes), ``data.classes`` for every format, and
ADE20K data prepared here fitting a generator of the reference's ADE20K setting."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ingest_dataset, write_project_params
from PIL import Image
from typer.testing import CliRunner

from gaugan.classes import ClassTable
from gaugan.config import reference_setting
from gaugan.data import PreparedDataset
from gaugan.encoding import encode_labels
from gaugan.generator import SPADEGenerator
from pipeline.cli import app
from pipeline.datasets.ade20k import read_object_info
from pipeline.datasets.class_tables import builtin_table, cityscapes_instance_classes, voc_color
from pipeline.datasets.coco_stuff import read_labels_txt
from pipeline.errors import IngestError

SPADE = "cocostuff/spade_coco_stuff"
ADE = "ade20k/sceneparsing"


def _link(dst: Path, src: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src, target_is_directory=src.is_dir())


def test_coco_stuff_table_has_the_published_names_and_reference_display_colours(real_fixtures):
    table = builtin_table("coco-stuff")
    published = [e["name"] for e in read_labels_txt(real_fixtures / "cocostuff/labels.txt")]
    assert table.label_nc == 182 and list(table.names) == published
    assert table.names[0] == "person" and table.names[11] == "street sign" and table.names[181] == "wood"
    assert table.contain_dontcare_label and table.has_instances and table.ignore is None
    # the PASCAL VOC colour map (value + 1): VOC's aeroplane, bicycle and person colours
    assert voc_color(1) == (128, 0, 0) and voc_color(2) == (0, 128, 0) and voc_color(15) == (192, 128, 128)
    assert table.colors[0] == voc_color(1) and len(set(table.colors)) == 182 and (0, 0, 0) not in table.colors
    assert reference_setting("coco-stuff").semantic_nc == table.label_nc + 1 + 1  # + dontcare + edges


def test_ade20k_table_is_the_reference_input_with_objectinfo_names_and_palette(real_fixtures):
    table = builtin_table("ade20k")
    published = [e["name"] for e in read_object_info(real_fixtures / ADE)]  # objectInfo150.txt, first names
    assert list(table.names) == published and table.label_nc == 151 and table.names[0] == "other"
    assert table.names[45] == "chest of drawers" and table.names[150] == "flag"
    assert not table.contain_dontcare_label and table.ignored() == [0]
    assert table.label_nc + int(table.contain_dontcare_label) == reference_setting("ade20k").semantic_nc == 151
    assert table.colors[0] == (0, 0, 0) and table.colors[1] == (120, 120, 120)  # other, wall
    assert table.colors[3] == (6, 230, 230) and table.colors[150] == (92, 0, 255)  # sky, flag
    shared = [c for c in set(table.colors) if table.colors.count(c) > 1]
    assert shared == [(140, 140, 140)] and [i for i, c in enumerate(table.colors) if c == shared[0]] == [7, 49]


def test_cityscapes_table_follows_cityscapesscripts():
    table = builtin_table("cityscapes")
    assert table.label_nc == 35 and not table.contain_dontcare_label and table.has_instances
    assert (table.names[7], table.colors[7]) == ("road", (128, 64, 128))
    assert (table.names[26], table.colors[26]) == ("car", (0, 0, 142))
    assert (table.names[23], table.colors[23]) == ("sky", (70, 130, 180))
    assert table.names[34] == "license plate" and table.names[:3] == (
        "unlabeled",
        "ego vehicle",
        "rectification border",
    )
    assert cityscapes_instance_classes() == tuple(range(24, 34))
    scored = [table.names[i] for i in range(35) if i not in table.ignored()]
    assert scored == [
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    ]
    assert reference_setting("cityscapes").semantic_nc == 35 + 1  # no dontcare, + edges


def test_a_reference_dataroot_ingests_as_it_is_with_a_builtin_table(tmp_path, real_fixtures):
    """`ingest --format spade --classes coco-stuff` on the reference's own coco_stuff dataroot (no class file)."""
    src = tmp_path / "dataroot"
    for sub in ("train_img", "train_label", "train_inst", "val_img", "val_label", "val_inst"):
        _link(src / sub, real_fixtures / SPADE / sub)
    params = write_project_params(tmp_path)
    out = tmp_path / "prepared"
    args = ["ingest", "--params", str(params), "--format", "spade", "--source", str(src), "--out", str(out)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "data.classes (--classes) to coco-stuff" in refused.output
    result = CliRunner().invoke(app, [*args, "--classes", "coco-stuff"])
    assert result.exit_code == 0, result.output
    assert "prepared train: 13, val: 8" in result.output
    table = ClassTable.load(out)
    assert table == replace(builtin_table("coco-stuff"), has_instances=True)
    assert json.loads((out / "stats.json").read_text())["dontcare_fraction"] > 0  # 255 kept as dontcare


def test_every_format_takes_a_table_or_a_class_file(tmp_path, real_fixtures):
    src = tmp_path / "ade"
    _link(src / "images", real_fixtures / ADE / "ADEChallengeData2016/images")
    _link(src / "annotations", real_fixtures / ADE / "ADEChallengeData2016/annotations")
    ingest_dataset("ade20k", src, tmp_path / "a", classes="ade20k")  # no objectInfo150 needed
    assert ClassTable.load(tmp_path / "a") == builtin_table("ade20k")
    with pytest.raises(IngestError, match=r"has 182 classes but the 'ade20k' format's label values mean 151"):
        ingest_dataset("ade20k", src, tmp_path / "b", classes="coco-stuff")
    # a class file: a prepared dataset's classes.json is taken whole, a classes.txt line by line
    ingest_dataset("ade20k", src, tmp_path / "c", classes=str(tmp_path / "a/classes.json"))
    assert ClassTable.load(tmp_path / "c") == builtin_table("ade20k")
    names = [f"class-{i}" for i in range(151)]
    (tmp_path / "mine.txt").write_text("\n".join(names[:2] + ["wall,1,2,3"] + names[3:]) + "\n")
    ingest_dataset("ade20k", src, tmp_path / "d", classes=str(tmp_path / "mine.txt"))
    mine = ClassTable.load(tmp_path / "d")
    assert mine.names[2] == "wall" and mine.colors[2] == (1, 2, 3) and mine.label_nc == 151
    with pytest.raises(IngestError, match=r"nope\.txt: class file not found"):
        ingest_dataset("ade20k", src, tmp_path / "e", classes=str(tmp_path / "nope.txt"))
    # the demo format too (its 12 classes renamed)
    renamed = [f"c{i}" for i in range(12)]
    (tmp_path / "demo.txt").write_text("\n".join(renamed))
    demo = {"num_train": 2, "num_val": 2, "width": 16, "height": 16, "seed": 0}
    ingest_dataset("demo", tmp_path, tmp_path / "f", classes=str(tmp_path / "demo.txt"), demo=demo)
    assert list(ClassTable.load(tmp_path / "f").names) == renamed


def test_ade20k_prepared_here_fits_the_reference_ade20k_generator(tmp_path, real_fixtures):
    src = tmp_path / "ade"
    _link(src / "images", real_fixtures / ADE / "ADEChallengeData2016/images")
    _link(src / "annotations", real_fixtures / ADE / "ADEChallengeData2016/annotations")
    shutil.copy(real_fixtures / ADE / "objectInfo150.txt", src)
    out = tmp_path / "prepared"
    ingest_dataset("ade20k", src, out)
    classes = ClassTable.load(out)
    assert classes.label_nc == 151 and not classes.contain_dontcare_label
    assert classes.names == builtin_table("ade20k").names
    config = reference_setting("ade20k")
    val = PreparedDataset(out, "val")
    maps = [torch.from_numpy(val[i]["label"])[None, None].float() for i in range(len(val))]
    label = torch.cat([F.interpolate(m, size=(128, 128), mode="nearest") for m in maps]).long()[:, 0]
    assert int(label.max()) == 103 and int(label.min()) == 0  # 'other' and the classes of the real maps
    mine = encode_labels(label, classes.label_nc, classes.contain_dontcare_label)
    assert mine.shape[1] == config.semantic_nc == 151
    # channel for channel what the reference feeds its ADE20K generator (label_nc 150 + dontcare),
    # up to 150 ('flag'), which shares the reference's dontcare channel
    assert torch.equal(mine, encode_labels(label, 150, True))
    edge_values = torch.tensor([[[0, 1, 149, 150]]])
    assert torch.equal(encode_labels(edge_values, 151, False), encode_labels(edge_values, 150, True))
    netG = SPADEGenerator(replace(config, ngf=4, spade_hidden=8)).eval()  # the setting, narrow
    with torch.no_grad():
        image = netG(mine)
    assert image.shape == (3, 3, 128, 128) and bool(torch.isfinite(image).all())


def test_a_dontcare_value_is_refused_where_the_table_has_no_dontcare_channel(tmp_path, real_fixtures):
    src = tmp_path / "ade"
    _link(src / "images", real_fixtures / ADE / "ADEChallengeData2016/images")
    labels = src / "annotations/validation"
    shutil.copytree(real_fixtures / ADE / "ADEChallengeData2016/annotations/validation", labels)
    arr = np.array(Image.open(labels / "ADE_val_00000002.png"))
    arr[0, 0] = 255
    Image.fromarray(arr).save(labels / "ADE_val_00000002.png")
    with pytest.raises(IngestError, match=r"ADE_val_00000002.*label value 255 .*no dontcare value in this class table"):
        ingest_dataset("ade20k", src, tmp_path / "out", classes="ade20k")
