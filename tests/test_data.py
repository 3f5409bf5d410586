"""The prepared-dataset reader: items, class table, colours, and errors that name the file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import as_files, ingest_dataset, toy_classes
from PIL import Image

from gaugan.classes import ClassTable
from gaugan.data import PreparedDataset, dataset_id
from gaugan.errors import UnknownColorError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "prepared"
    ingest_dataset("demo", root, root, demo={"num_train": 3, "num_val": 2, "width": 40, "height": 32, "seed": 0})
    return root


def test_items_have_the_documented_types_and_match_the_files(prepared):
    ds = PreparedDataset(prepared, "train")
    assert len(ds) == 3 and ds.ids == ["demo_train_000000", "demo_train_000001", "demo_train_000002"]
    assert ds.classes.dataset == "demo" and ds.classes.label_nc == 12 and ds.classes.names[0] == "sky"
    item = ds[1]
    assert item["id"] == "demo_train_000001"
    assert item["image"].dtype == np.uint8 and item["image"].shape == (32, 40, 3)
    assert item["label"].dtype == np.int64 and item["label"].shape == (32, 40)
    assert item["instance"].dtype == np.int32 and item["instance"].shape == (32, 40)
    files = as_files(prepared)  # the same dataset as one file per map: the same items
    np.testing.assert_array_equal(item["label"], np.array(Image.open(files / "labels/train/demo_train_000001.png")))
    np.testing.assert_array_equal(
        item["instance"], np.array(Image.open(files / "instances/train/demo_train_000001.png"))
    )
    from_files = PreparedDataset(files, "train")
    assert not from_files.sharded and PreparedDataset(prepared, "train").sharded
    for i in range(len(ds)):
        for key in ("image", "label", "instance"):
            np.testing.assert_array_equal(from_files[i][key], ds[i][key])
            assert from_files[i][key].dtype == ds[i][key].dtype
    assert PreparedDataset(prepared, "train", load_instances=False)[0]["instance"] is None
    seen = []
    ds_t = PreparedDataset(prepared, "val", transform=lambda s: seen.append(s["id"]) or s["label"].sum())
    assert ds_t[0] == int(PreparedDataset(prepared, "val")[0]["label"].sum()) and seen == ["demo_val_000000"]


def test_class_table_and_colorize(prepared):
    table = ClassTable.load(prepared)
    assert isinstance(table, ClassTable) and table.has_instances and table.contain_dontcare_label
    assert len(table.names) == len(table.colors) == table.label_nc
    label = np.array([[0, 5], [255, 11]])
    rgb = table.colorize(label)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == list(table.colors[0]) and rgb[1, 1].tolist() == list(table.colors[11])
    assert rgb[1, 0].tolist() == [0, 0, 0]  # dontcare is black
    assert table.colorize(np.array([[-1, 12]])).tolist() == [[[0, 0, 0], [0, 0, 0]]]
    assert table.to_dict()["classes"][5]["name"] == "grass"
    assert ClassTable.from_dict(table.to_dict()) == table


def test_colour_coded_maps_read_back_exactly_and_unknown_colours_are_named():
    table = toy_classes()  # sky (200,40,40), grass (40,200,40), water (40,40,200), sand (220,220,40)
    labels = np.array([[0, 1, 2], [3, 255, 0]])
    np.testing.assert_array_equal(table.indices_from_colors(table.colorize(labels)), labels)
    painted = table.colorize(labels)
    painted[0, 0] = (198, 41, 40)  # antialiased sky
    painted[1, 2] = (198, 41, 40)
    with pytest.raises(UnknownColorError, match=r"\(198, 41, 40\) on 2 pixels \(nearest class: 0 'sky'"):
        table.indices_from_colors(painted)


def test_ignored_classes_follow_override_then_table_then_dataset_standard():
    assert toy_classes().ignored() == []
    assert toy_classes().ignored([2, 1]) == [1, 2]
    assert toy_classes(dataset="ade20k").ignored() == [0]
    with pytest.raises(ValueError, match=r"ignored classes \[7\] are outside 0..3"):
        toy_classes().ignored([7])


def test_dataset_id_changes_with_the_samples_and_the_classes(prepared, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(prepared, root)
    first = dataset_id(root)
    assert len(first) == 16 and dataset_id(prepared) == first  # a copy is the same dataset
    frame = pd.read_parquet(root / "manifest.parquet")
    frame.loc[0, "source_hash"] = "changed"
    frame.to_parquet(root / "manifest.parquet", index=False)
    second = dataset_id(root)
    classes = json.loads((root / "classes.json").read_text())
    classes["classes"][0]["name"] = "heaven"
    (root / "classes.json").write_text(json.dumps(classes))
    assert len({first, second, dataset_id(root)}) == 3


def test_null_instances_from_a_dataset_without_them(tmp_path, prepared):
    root = tmp_path / "p"
    shutil.copytree(prepared, root)
    frame = pd.read_parquet(root / "manifest.parquet")
    frame["instance"] = None
    frame["edge"] = None
    frame.to_parquet(root / "manifest.parquet", index=False)
    assert PreparedDataset(root, "train")[0]["instance"] is None


def test_errors_name_the_file(tmp_path, prepared):
    root = tmp_path / "p"
    shutil.copytree(as_files(prepared), root)  # the file layout (errors of shards: test_shards.py)
    with pytest.raises(ValueError, match="split must be"):
        PreparedDataset(root, "test")
    (root / "labels/train/demo_train_000002.png").unlink()
    ds = PreparedDataset(root, "train")
    with pytest.raises(FileNotFoundError, match="labels/train/demo_train_000002.png"):
        ds[2]
    frame = pd.read_parquet(root / "manifest.parquet")
    frame[frame["split"] == "train"].to_parquet(root / "manifest.parquet", index=False)
    with pytest.raises(ValueError, match=r"manifest.parquet: the 'val' split is empty"):
        PreparedDataset(root, "val")
    classes = json.loads((root / "classes.json").read_text())
    classes["label_nc"] = 13
    (root / "classes.json").write_text(json.dumps(classes))
    with pytest.raises(ValueError, match=r"classes.json: malformed class table \(label_nc is 13 but 12 classes"):
        ClassTable.load(root)
    (root / "classes.json").write_text("{oops")
    with pytest.raises(ValueError, match="classes.json: not valid JSON"):
        PreparedDataset(root, "train")
    (root / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match="classes.json"):
        ClassTable.load(root)
    (root / "manifest.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.parquet"):
        PreparedDataset(root, "train")
