"""The prepared-dataset reader: items, class table, colours, and errors that name the file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gaugan.data import ClassTable, PreparedDataset, colorize, load_class_table
from pipeline.ingest import run_ingest
from pipeline.params import parse_params


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "prepared"
    settings = parse_params({"data": {"demo": {"num_train": 3, "num_val": 2, "width": 40, "height": 32}}}).data
    run_ingest("demo", root, root, settings=settings, progress=False)
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
    np.testing.assert_array_equal(item["label"], np.array(Image.open(prepared / "labels/train/demo_train_000001.png")))
    np.testing.assert_array_equal(
        item["instance"], np.array(Image.open(prepared / "instances/train/demo_train_000001.png"))
    )
    assert PreparedDataset(prepared, "train", load_instances=False)[0]["instance"] is None
    seen = []
    ds_t = PreparedDataset(prepared, "val", transform=lambda s: seen.append(s["id"]) or s["label"].sum())
    assert ds_t[0] == int(PreparedDataset(prepared, "val")[0]["label"].sum()) and seen == ["demo_val_000000"]


def test_class_table_and_colorize(prepared):
    table = load_class_table(prepared)
    assert isinstance(table, ClassTable) and table.has_instances and table.contain_dontcare_label
    assert len(table.names) == len(table.colors) == table.label_nc
    label = np.array([[0, 5], [255, 11]])
    rgb = colorize(label, table)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == list(table.colors[0]) and rgb[1, 1].tolist() == list(table.colors[11])
    assert rgb[1, 0].tolist() == [0, 0, 0]  # dontcare is black
    assert colorize(np.array([[-1, 12]]), table).tolist() == [[[0, 0, 0], [0, 0, 0]]]
    assert table.to_dict()["classes"][5]["name"] == "grass"


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
    shutil.copytree(prepared, root)
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
    with pytest.raises(ValueError, match="classes.json: label_nc is 13 but 12 classes"):
        load_class_table(root)
    (root / "classes.json").write_text("{oops")
    with pytest.raises(ValueError, match="classes.json: not valid JSON"):
        PreparedDataset(root, "train")
    (root / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match="classes.json"):
        load_class_table(root)
    (root / "manifest.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.parquet"):
        PreparedDataset(root, "train")
