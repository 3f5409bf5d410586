"""The ``cityscapes`` ingest format on files written the way the dataset ships them: the
gtFine/leftImg8bit layout and names, 8-bit labelIds, 16-bit instanceIds (labelId * 1000 + k for
objects, the label id elsewhere)."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import as_files, ingest_dataset
from PIL import Image

from gaugan.config import reference_setting
from gaugan.data import PreparedDataset
from gaugan.encoding import encode_labels
from pipeline.datasets.class_tables import builtin_table
from pipeline.errors import IngestError

H, W = 32, 64
ROAD, SIDEWALK, BUILDING, SKY, PERSON, CAR, UNLABELED = 7, 8, 11, 23, 24, 26, 0


def scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labelIds uint8, instanceIds int32) of one frame: sky, building, road, sidewalk, two cars, a
    person, a crowd of cars without single objects (label id in instanceIds) and void at the bottom."""
    label = np.full((H, W), SKY, np.uint8)
    label[8:16] = BUILDING
    label[16:28] = ROAD
    label[16:28, 56:] = SIDEWALK
    label[28:] = UNLABELED
    inst = label.astype(np.int32)  # stuff and unlabeled pixels: their label id
    objects = [(CAR, 0, (18, 24, 4 + seed, 16)), (CAR, 1, (18, 26, 14, 30)), (PERSON, 0, (12, 26, 40, 44))]
    for cls, k, (y0, y1, x0, x1) in objects:
        label[y0:y1, x0:x1] = cls
        inst[y0:y1, x0:x1] = cls * 1000 + k
    label[20:24, 46:54] = CAR  # a car group: labelled car, no instance
    inst[20:24, 46:54] = CAR
    return label, inst


def write_frame(root: Path, split: str, city: str, seq: int, frame: int, seed: int, writer: str = "pil") -> str:
    key = f"{city}_{seq:06d}_{frame:06d}"
    img_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    label, inst = scene(seed)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(img_dir / f"{key}_leftImg8bit.png")
    Image.fromarray(label).save(gt_dir / f"{key}_gtFine_labelIds.png")
    # cityscapesScripts draws instanceIds into a 32-bit image, stored as a 16-bit greyscale PNG
    path = gt_dir / f"{key}_gtFine_instanceIds.png"
    if writer == "opencv":
        cv2.imwrite(str(path), inst.astype(np.uint16))
    else:
        Image.fromarray(inst.astype(np.uint16)).save(path)
    return key


def png_depth(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) from the PNG's IHDR chunk."""
    data = path.read_bytes()
    return struct.unpack(">B", data[24:25])[0], struct.unpack(">B", data[25:26])[0]


def reference_edges(t: np.ndarray) -> np.ndarray:
    """The reference's get_edges: a pixel is an edge where a 4-neighbour differs, both sides marked."""
    e = np.zeros(t.shape, bool)
    dx, dy = t[:, 1:] != t[:, :-1], t[1:, :] != t[:-1, :]
    e[:, 1:] |= dx
    e[:, :-1] |= dx
    e[1:, :] |= dy
    e[:-1, :] |= dy
    return e


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    write_frame(root, "train", "aachen", 0, 19, seed=0, writer="opencv")
    write_frame(root, "train", "bochum", 0, 1234, seed=1)
    write_frame(root, "val", "frankfurt", 1, 5, seed=2)
    write_frame(root, "test", "berlin", 0, 1, seed=3)  # test split: not read
    (root / "gtFine/train/aachen/aachen_000000_000019_gtFine_color.png").write_bytes(b"not read")
    return root


def test_labels_instances_edges_and_the_class_table(source, tmp_path):
    for path in source.glob("gtFine/*/*/*_instanceIds.png"):
        assert png_depth(path) == (16, 0)  # 16-bit greyscale, as the dataset ships it
        with Image.open(path) as im:
            assert im.mode in ("I", "I;16")  # what PIL makes of it (a 32-bit or 16-bit integer image)
    out = tmp_path / "prepared"
    stats = ingest_dataset("cityscapes", source, out)
    assert stats["num_samples"] == {"train": 2, "val": 1}
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert list(manifest["id"]) == ["aachen_000000_000019", "bochum_000000_001234", "frankfurt_000001_000005"]
    assert manifest["source"][0] == "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    ds = PreparedDataset(out, "train")
    files = as_files(out)  # the edge maps as files: the bytes the shards hold
    files_manifest = pd.read_parquet(files / "manifest.parquet")
    assert ds.classes == builtin_table("cityscapes")
    for i, seed in enumerate((0, 1)):
        sample = ds[i]
        label, raw = scene(seed)
        np.testing.assert_array_equal(sample["label"], label)
        inst = sample["instance"]
        # objects: one id each, 1..3 in instanceIds value order (24000, 26000, 26001)
        for value, want in ((24000, 1), (26000, 2), (26001, 3)):
            assert set(np.unique(inst[raw == value])) == {want}
        # elsewhere one id per label value (after the objects): the reference's edges, exactly
        assert set(np.unique(inst[raw < 1000])) == set(range(4, 4 + len(np.unique(label[raw < 1000]))))
        edges = np.array(Image.open(files / files_manifest["edge"][i]))
        np.testing.assert_array_equal(edges == 255, reference_edges(raw))
    semantic = encode_labels(torch.from_numpy(ds[0]["label"])[None], 35, False)
    assert semantic.shape[1] + 1 == reference_setting("cityscapes").semantic_nc  # + the edge channel


def test_without_background_segments_only_objects_have_ids(source, tmp_path):
    ingest_dataset("cityscapes", source, tmp_path / "p", instance_background="none")
    sample = PreparedDataset(tmp_path / "p", "val")[0]
    _, raw = scene(2)
    assert set(np.unique(sample["instance"][raw < 1000])) == {0}
    assert set(np.unique(sample["instance"])) == {0, 1, 2, 3}


def test_files_that_do_not_belong_together_are_refused(tmp_path):
    root = tmp_path / "src"
    key = write_frame(root, "train", "ulm", 0, 1, seed=0)
    gt = root / "gtFine/train/ulm"
    _, raw = scene(0)
    raw[0, 0] = CAR * 1000 + 7  # a car instance on a sky pixel
    Image.fromarray(raw.astype(np.uint16)).save(gt / f"{key}_gtFine_instanceIds.png")
    with pytest.raises(IngestError, match=r"instanceIds.png: instance id 26007 at pixel \(0, 0\) names label id 26 "):
        ingest_dataset("cityscapes", root, tmp_path / "out")
    (gt / f"{key}_gtFine_labelIds.png").unlink()
    with pytest.raises(
        IngestError, match=r"leftImg8bit.png: image without label \(expected .*ulm_000000_000001_gtFine_labelIds"
    ):
        ingest_dataset("cityscapes", root, tmp_path / "out")
    # trainIds files (255 = ignore) given as labelIds: 255 has no channel in the 35-class setting
    label, raw = scene(0)
    label[0, :] = 255
    Image.fromarray(label).save(gt / f"{key}_gtFine_labelIds.png")
    Image.fromarray(raw.astype(np.uint16)).save(gt / f"{key}_gtFine_instanceIds.png")
    with pytest.raises(IngestError, match=r"label value 255 is outside the class table \(0..34, no dontcare"):
        ingest_dataset("cityscapes", root, tmp_path / "out")
    assert not (tmp_path / "out").exists()
