"""Writing the prepared dataset: folder sources, incremental re-runs, workers, bad input, atomicity,
and the demo generator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import as_files, ingest_dataset, make_params
from PIL import Image

from gaugan.data import PreparedDataset
from gaugan.edges import instance_edges
from pipeline.datasets.demo import CLASSES, generate_sample, write_demo_source
from pipeline.datasets.writer import MANIFEST_COLUMNS
from pipeline.errors import IngestError, ParamsError

SMALL = make_params({"data": {"demo": {"num_train": 4, "num_val": 2, "width": 32, "height": 24, "seed": 3}}}).data.demo


def _read(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def source(tmp_path) -> Path:
    return write_demo_source(tmp_path / "src", SMALL)


def test_demo_is_deterministic_from_its_seed_and_varied():
    a, b = generate_sample(7, 3, 48, 32), generate_sample(7, 3, 48, 32)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    image, label, inst = a
    assert (
        image.shape == (32, 48, 3) and image.dtype == np.uint8 and label.dtype == np.uint8 and inst.dtype == np.uint16
    )
    assert not np.array_equal(generate_sample(8, 3, 48, 32)[0], image)  # another seed, another scene
    labels, colours = [], {i: [] for i in range(len(CLASSES))}
    for i in range(40):
        img, lab, ins = generate_sample(0, i, 64, 64)
        labels.append(lab)
        for c in np.unique(lab):
            colours[int(c)].append(img[lab == c].mean(axis=0))
        # every object and every class region has its own id, so edges mark class boundaries too
        assert (instance_edges(lab) <= instance_edges(ins)).all() and ins.min() >= 1
    present = np.unique(np.concatenate([x.ravel() for x in labels]))
    assert len(present) == len(CLASSES)  # all 12 classes show up in 40 scenes
    mean = {c: np.mean(v, axis=0) for c, v in colours.items()}
    sky, grass, water = mean[0], mean[5], mean[4]
    assert sky[2] > sky[0] + 30 and grass[1] > grass[0] + 30 and grass[1] > grass[2] + 30 and water[2] > water[0] + 20


def test_demo_format_and_its_folder_source_give_the_same_dataset(tmp_path, source):
    ingest_dataset("demo", tmp_path, tmp_path / "a", demo=SMALL.model_dump())
    stats = ingest_dataset("folder", source, tmp_path / "b")
    assert stats["num_samples"] == {"train": 4, "val": 2}
    fa, fb = _files(as_files(tmp_path / "a")), _files(as_files(tmp_path / "b"))
    pngs = [k for k in fa if k.endswith(".png")]
    assert len(pngs) == 6 * 4 and all(fa[k] == fb[k] for k in pngs)
    shards = [k for k in _files(tmp_path / "a") if k.startswith("shards/")]
    assert shards == ["shards/train-000000.tar", "shards/val-000000.tar"]
    assert all((tmp_path / "a" / k).read_bytes() == (tmp_path / "b" / k).read_bytes() for k in shards)
    ma = pd.read_parquet(tmp_path / "a/manifest.parquet")
    assert list(ma.columns) == list(MANIFEST_COLUMNS) and ma["source"].iloc[0] == "generated:3:0"
    assert pd.read_parquet(tmp_path / "b/manifest.parquet")["source"].iloc[0] == "images/train/demo_train_000000.png"


def test_folder_with_classes_txt_and_written_files(tmp_path):
    src = tmp_path / "src"
    for sub in ("images/train", "labels/train", "images/val", "labels/val"):
        (src / sub).mkdir(parents=True)
    (src / "classes.txt").write_text("# name, r, g, b\nroad,128,64,128\ncar\n\nperson,220,20,60\n")
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    Image.fromarray(grey).save(src / "images/train/a.png")  # greyscale: stored as RGB PNG
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(src / "images/val/b.jpg", quality=90)
    label = np.array([[0, 1, 2, 255, 1, 0] * 5] * 20, np.uint8)
    palette = Image.fromarray(label, mode="L").convert("P")  # a palette label: indices must be kept
    palette.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 3 % 256, i)])
    palette.save(src / "labels/train/a.png")
    Image.fromarray(label).save(src / "labels/val/b.png")
    out = tmp_path / "out"
    stats = ingest_dataset("folder", src, out)
    classes = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in classes["classes"]] == ["road", "car", "person"]
    assert classes["classes"][0]["color"] == [128, 64, 128] and classes["has_instances"] is False
    a = PreparedDataset(out, "train")[0]
    np.testing.assert_array_equal(a["label"], label)
    np.testing.assert_array_equal(a["image"], np.repeat(grey[..., None], 3, axis=2))
    assert PreparedDataset(out, "val").member_bytes(0)["image"] == (src / "images/val/b.jpg").read_bytes()
    freq = stats["class_pixel_frequency"]["train"]
    assert freq == {
        "0": pytest.approx(1 / 3, abs=1e-6),
        "1": pytest.approx(1 / 3, abs=1e-6),
        "2": pytest.approx(1 / 6, abs=1e-6),
    }
    assert stats["dontcare_fraction"] == pytest.approx(1 / 6, abs=1e-6)


def test_incremental_rerun_processes_only_new_and_changed(tmp_path, source):
    out = tmp_path / "prepared"
    first = ingest_dataset("folder", source, out)
    assert (first["processed_this_run"], first["reused"]) == (6, 0)
    assert first["shards"]["written"] == ["shards/train-000000.tar", "shards/val-000000.tar"]
    before = _files(out)
    inode = (out / "shards/train-000000.tar").stat().st_ino
    # add one image, change one, remove one
    image, label, instance = generate_sample(99, 0, 32, 24)
    for sub, arr in (("images", image), ("labels", label), ("instances", instance)):
        Image.fromarray(arr).save(source / sub / "train" / "new_one.png")
    changed = source / "labels/train/demo_train_000001.png"
    lab = _read(changed)
    lab[:4] = 7
    Image.fromarray(lab).save(changed)
    for sub in ("images", "labels", "instances"):
        (source / sub / "val" / "demo_val_000001.png").unlink()
    second = ingest_dataset("folder", source, out, workers=2, compact_dead_fraction=0.6)
    assert (second["processed_this_run"], second["reused"]) == (2, 4)
    assert second["num_samples"] == {"train": 5, "val": 1}
    # new and changed samples go into a new shard; the old train shard (1 of 4 samples dead) stays
    # as it was, hard-linked; so does the val shard (1 of 2 samples dead: about half, under 0.6)
    assert second["shards"] == {
        "written": ["shards/train-000001.tar"],
        "kept": ["shards/train-000000.tar", "shards/val-000000.tar"],
        "compacted": [],
        "removed": [],
    }
    after = _files(out)
    assert {k for k in after if k != "shards/train-000001.tar"} == set(before)
    assert [k for k in before if before[k] != after[k]] == ["manifest.parquet", "stats.json"]
    assert (out / "shards/train-000000.tar").stat().st_ino == inode
    train = PreparedDataset(out, "train")
    np.testing.assert_array_equal(train[train.ids.index("demo_train_000001")]["label"], lab)
    np.testing.assert_array_equal(train[train.ids.index("new_one")]["label"], label)
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("id")
    assert sorted(manifest.index) == sorted(
        [
            "demo_train_000000",
            "demo_train_000001",
            "demo_train_000002",
            "demo_train_000003",
            "new_one",
            "demo_val_000000",
        ]
    )
    assert manifest.loc["demo_train_000001", "shard"] == manifest.loc["new_one", "shard"] == "shards/train-000001.tar"
    third = ingest_dataset("folder", source, out, compact_dead_fraction=0.6)
    assert (third["processed_this_run"], third["reused"]) == (0, 6)
    assert third["class_pixel_frequency"] == second["class_pixel_frequency"]  # counted again from the labels
    assert _files(out)["shards/train-000000.tar"] == before["shards/train-000000.tar"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared")]


def test_two_workers_write_the_same_dataset(tmp_path):
    demo = {"num_train": 6, "num_val": 3, "width": 32, "height": 32, "seed": 0}
    one = ingest_dataset("demo", tmp_path, tmp_path / "one", workers=1, demo=demo)
    two = ingest_dataset("demo", tmp_path, tmp_path / "two", workers=2, demo=demo)
    assert one == two
    fa, fb = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(fa) == sorted(fb) == ["classes.json", "manifest.parquet", *one["shards"]["written"], "stats.json"]
    assert len(one["shards"]["written"]) == 2 and all(fa[k] == fb[k] for k in fa)


BAD = [
    ("truncated", "demo_train_000001.png: cannot read the image, truncated"),
    ("not_an_image", "demo_train_000001.png: cannot read the image"),
    ("size", "label map is 16x16 but the image is 32x24"),
    ("value", "label value 77 is outside the class table"),
    ("no_label", "image without label"),
    ("instance_size", "instance map is 8x8 but the image is 32x24"),
]


@pytest.mark.parametrize("problem,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_fails_cleanly_or_is_skipped(tmp_path, source, problem, message):
    bad = "demo_train_000001"
    image = source / f"images/train/{bad}.png"
    if problem == "truncated":
        image.write_bytes(image.read_bytes()[:-200])
    elif problem == "not_an_image":
        image.write_bytes(b"this is not a picture")
    elif problem == "size":
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(source / f"labels/train/{bad}.png")
    elif problem == "value":
        Image.fromarray(np.full((24, 32), 77, np.uint8)).save(source / f"labels/train/{bad}.png")
    elif problem == "no_label":
        (source / f"labels/train/{bad}.png").unlink()
    else:
        Image.fromarray(np.zeros((8, 8), np.uint16)).save(source / f"instances/train/{bad}.png")
    out = tmp_path / "prepared"
    with pytest.raises(IngestError, match=message) as err:
        ingest_dataset("folder", source, out, on_error="fail", workers=2)
    assert bad in str(err.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared")]
    stats = ingest_dataset("folder", source, out, on_error="skip", workers=2)
    assert stats["num_samples"] == {"train": 3, "val": 2}
    assert len(stats["skipped"]) == 1 and bad in stats["skipped"][0]["file"]
    assert message.split(": ")[-1] in stats["skipped"][0]["error"]
    assert json.loads((out / "stats.json").read_text())["skipped"] == stats["skipped"]
    assert bad not in set(pd.read_parquet(out / "manifest.parquet")["id"])


def test_missing_or_malformed_class_file(tmp_path, source):
    (source / "classes.json").write_text("{not json")
    with pytest.raises(IngestError, match="classes.json: malformed class file"):
        ingest_dataset("folder", source, tmp_path / "out")
    (source / "classes.json").unlink()
    with pytest.raises(IngestError, match="no class file"):
        ingest_dataset("folder", source, tmp_path / "out")
    (source / "classes.txt").write_text("sky\nsea,1,2\n")
    with pytest.raises(IngestError, match=r"classes.txt:2: malformed class line"):
        ingest_dataset("folder", source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_or_interrupted_rerun_keeps_the_previous_output(tmp_path, source, monkeypatch):
    out = tmp_path / "prepared"
    ingest_dataset("folder", source, out)
    before = _files(out)
    Image.fromarray(np.full((24, 32), 99, np.uint8)).save(source / "labels/train/demo_train_000003.png")
    with pytest.raises(IngestError):
        ingest_dataset("folder", source, out)
    assert _files(out) == before

    import pipeline.datasets.writer as writer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_stats", interrupted)  # dies after every sample was written
    with pytest.raises(KeyboardInterrupt):
        ingest_dataset("folder", source, out, on_error="skip")
    assert _files(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "src"]
    # a run killed between the two renames of the swap left the output parked: the next run restores it
    os.replace(out, tmp_path / ".prepared.old-12345")
    monkeypatch.undo()
    stats = ingest_dataset("folder", source, out, on_error="skip")
    assert stats["reused"] == 5 and stats["processed_this_run"] == 0 and len(stats["skipped"]) == 1


def test_unknown_format_and_empty_source(tmp_path):
    with pytest.raises(ParamsError, match=r"data.format: Input should be 'demo', 'coco-stuff'.*got 'nuscenes'"):
        ingest_dataset("nuscenes", tmp_path, tmp_path / "out")
    with pytest.raises(IngestError, match="source folder not found"):
        ingest_dataset("folder", tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/classes.txt").write_text("a\n")
    with pytest.raises(IngestError, match="no samples found"):
        ingest_dataset("folder", tmp_path / "empty", tmp_path / "out")
