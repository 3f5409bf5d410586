"""The dataset parsers on real files: SPADE dataroots, COCO-Stuff, ADE20K and the full ADE20K release."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import as_files, ingest_dataset
from PIL import Image
from pycocotools import mask as mask_utils

from gaugan.classes import ClassTable
from gaugan.data import PreparedDataset
from gaugan.edges import instance_edges
from pipeline.datasets.ade20k import instance_from_rgb, read_object_info
from pipeline.datasets.ade20k_full import convert_seg, read_map_from_ade, target_size
from pipeline.datasets.coco_stuff import (
    paint_runs,
    rasterize_instances,
    rasterize_stuff,
    read_labels_txt,
    rle_string_counts,
)
from pipeline.errors import IngestError

SPADE = "cocostuff/spade_coco_stuff"
# pycocotools.mask.decode (used here as the reference) trips a NumPy 2 deprecation warning
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _read(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def _link(dst: Path, src: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src, target_is_directory=src.is_dir())


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b split the pixels into the same regions (a bijection between their values)."""
    pairs = np.unique(a.ravel().astype(np.int64) * 65536 + b.ravel())
    return pairs.size == len(np.unique(a)) == len(np.unique(b))


def _ann_mask(ann: dict, h: int, w: int) -> np.ndarray:
    """pycocotools' own rasterization of one annotation (annToMask without a COCO object)."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_utils.decode(rle).astype(bool)


# --- spade ------------------------------------------------------------------------------------


@pytest.fixture()
def spade_source(tmp_path, real_fixtures) -> Path:
    """The real SPADE COCO-Stuff dataroot as it is, plus the official labels.txt."""
    src = tmp_path / "spade"
    for d in ("train_img", "train_label", "train_inst", "val_img", "val_label", "val_inst"):
        _link(src / d, real_fixtures / SPADE / d)
    shutil.copy(real_fixtures / "cocostuff/labels.txt", src / "labels.txt")
    return src


def _portraits(src: Path, stems: dict[str, str]) -> None:
    """Portrait folders as the reference's COCO dataroot has them, made of renamed val samples."""
    for kind, ext in (("img", "jpg"), ("label", "png"), ("inst", "png")):
        (src / f"train_{kind}_portrait").mkdir()
        for old, new in stems.items():
            shutil.copy(src / f"val_{kind}/{old}.{ext}", src / f"train_{kind}_portrait/{new}.{ext}")


def test_spade_portrait_folders_train_as_the_reference(spade_source, tmp_path):
    """COCO's train_*_portrait folders join the train split (the reference without --coco_no_portraits)."""
    _portraits(spade_source, {"000000000139": "portrait_a", "000000000785": "portrait_b"})
    stats = ingest_dataset("spade", spade_source, tmp_path / "with", workers=2)
    assert stats["num_samples"] == {"train": 15, "val": 8}
    files = as_files(tmp_path / "with")
    manifest = pd.read_parquet(files / "manifest.parquet").set_index("id")
    assert manifest.loc["portrait_a", "split"] == "train"
    assert manifest.loc["portrait_a", "source"] == "train_img_portrait/portrait_a.jpg"
    label = _read(files / manifest.loc["portrait_b", "label"])
    np.testing.assert_array_equal(label, _read(spade_source / "val_label/000000000785.png"))
    stats = ingest_dataset("spade", spade_source, tmp_path / "without", workers=2, coco_portraits=False)
    assert stats["num_samples"] == {"train": 13, "val": 8}


def test_spade_portrait_id_colliding_with_a_train_sample_is_refused(spade_source, tmp_path):
    train_stem = sorted(p.stem for p in (spade_source / "train_img").iterdir())[0]
    _portraits(spade_source, {"000000000139": train_stem})
    with pytest.raises(IngestError, match=f"train_img_portrait/{train_stem}.jpg.*coco_portraits: false"):
        ingest_dataset("spade", spade_source, tmp_path / "out", workers=2)
    assert not (tmp_path / "out").exists()


def test_spade_dataroot_labels_identical_instances_same_regions(spade_source, tmp_path):
    out = tmp_path / "prepared"
    stats = ingest_dataset("spade", spade_source, out, workers=2)
    assert stats["num_samples"] == {"train": 13, "val": 8} and stats["skipped"] == []
    classes = ClassTable.load(out)
    assert (classes.dataset, classes.label_nc, classes.has_instances) == ("coco-stuff", 182, True)
    assert classes.names[0] == "person" and classes.names[181] == "wood" and classes.names[91] == "banner"
    files = as_files(out)  # the bytes the shards hold, as one file per map
    manifest = pd.read_parquet(files / "manifest.parquet")
    assert len(manifest) == 21 and set(manifest["dataset"]) == {"coco-stuff"}
    for row in manifest.itertuples():
        src_label = _read(spade_source / f"{row.split}_label/{row.id}.png")
        label = _read(files / row.label)
        np.testing.assert_array_equal(label, src_label)  # values 0..181 and 255 kept as they are
        assert (files / row.label).read_bytes() == (spade_source / f"{row.split}_label/{row.id}.png").read_bytes()
        assert (files / row.image).read_bytes() == (spade_source / f"{row.split}_img/{row.id}.jpg").read_bytes()
        assert (row.width, row.height) == Image.open(files / row.image).size
        assert row.source == f"{row.split}_img/{row.id}.jpg"
        src_inst = _read(spade_source / f"{row.split}_inst/{row.id}.png")
        inst = _read(files / row.instance)
        assert inst.dtype == np.uint16 and inst.min() == 1 and inst.max() == len(np.unique(src_inst))
        assert _same_partition(inst, src_inst)
        # so the edges are exactly the reference's edges of its own map
        np.testing.assert_array_equal(_read(files / row.edge), instance_edges(src_inst))
    val = PreparedDataset(out, "val")
    sample = val[val.ids.index("000000000139")]
    assert 255 in sample["label"] and sample["label"][sample["label"] != 255].max() <= 181
    assert stats["dontcare_fraction"] > 0 and "0" in stats["class_pixel_frequency"]["val"]


# --- coco-stuff -------------------------------------------------------------------------------


def test_labels_txt_numbering_is_detected_by_content(real_fixtures, tmp_path):
    official = read_labels_txt(real_fixtures / "cocostuff/labels.txt")  # "0: unlabeled", JSON ids
    assert len(official) == 182 and official[0]["name"] == "person" and official[181]["name"] == "wood"
    assert official[11]["name"] == "street sign"  # an unused thing id keeps its channel (JSON id 12)
    png = tmp_path / "labels_png.txt"  # the same list, PNG-numbered
    png.write_text("\n".join(f"{e['index']}: {e['name']}" for e in official) + "\n")
    assert [e["name"] for e in read_labels_txt(png)] == [e["name"] for e in official]
    png.write_text("0: person\n1: bicycle\n")
    with pytest.raises(IngestError, match="labels_png.txt: expected classes 0..181"):
        read_labels_txt(png)


def test_rle_decoding_equals_pycocotools_on_real_stuff_json(real_fixtures):
    data = json.loads((real_fixtures / "cocostuff/stuff_examples.json").read_text())
    assert len(data["annotations"]) == 17
    for ann in data["annotations"]:
        h, w = ann["segmentation"]["size"]
        canvas = np.zeros((w, h), np.uint8)
        paint_runs(canvas, rle_string_counts(ann["segmentation"]["counts"]), 1)
        np.testing.assert_array_equal(canvas.T, mask_utils.decode(ann["segmentation"]))


def test_stuff_json_rasterization(real_fixtures):
    data = json.loads((real_fixtures / "cocostuff/stuff_examples.json").read_text())
    for image in data["images"]:
        h, w = image["height"], image["width"]
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        label = rasterize_stuff(anns, h, w)
        expected = np.full((h, w), 255, np.uint8)
        for a in anns:
            if a["category_id"] != 183:  # 'other' = the things: left for the instances JSON
                expected[mask_utils.decode(a["segmentation"]) == 1] = a["category_id"] - 1
        np.testing.assert_array_equal(label, expected)
        assert label[label != 255].min() >= 91  # stuff only: 92..182 -> 91..181


@pytest.fixture(scope="module")
def rikai(real_fixtures):
    data = json.loads((real_fixtures / "coco/instances_train2017_subset20_rikai.json").read_text())
    cats = json.loads((real_fixtures / "coco/instances_val2017_small_airo.json").read_text())["categories"]
    return data, {c["id"]: c["name"] for c in cats}


@pytest.mark.parametrize("crowd", ["ignore", "instance"])
def test_one_id_per_annotation_last_wins_on_real_coco_json(rikai, crowd):
    data, _ = rikai
    assert sum(a["iscrowd"] for a in data["annotations"]) == 11
    overlaps = crowd_pixels = 0
    for image in data["images"]:
        h, w = image["height"], image["width"]
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        inst = rasterize_instances(anns, h, w, crowd)
        painted = [a for a in anns if crowd == "instance" or not a["iscrowd"]]
        masks = [_ann_mask(a, h, w) for a in painted]
        later = np.zeros((h, w), bool)
        for k in range(len(masks), 0, -1):  # id k = k-th painted annotation, minus what later ones cover
            m = masks[k - 1]
            np.testing.assert_array_equal(inst == k, m & ~later)
            overlaps += int((m & later).sum())
            later |= m
        assert (inst[~later] == 0).all() and inst.max() <= len(painted)
        crowd_masks = [_ann_mask(a, h, w) for a in anns if a["iscrowd"]]
        if crowd == "ignore" and crowd_masks:
            crowd_only = np.any(crowd_masks, axis=0) & ~later
            crowd_pixels += int(crowd_only.sum())
            assert (inst[crowd_only] == 0).all()  # no id for crowd regions
    assert overlaps > 0  # the subset has real overlaps, resolved by file order
    assert crowd == "instance" or crowd_pixels > 10_000


def test_polygon_with_four_numbers_is_not_read_as_a_box():
    ann = {
        "id": 1,
        "category_id": 1,
        "iscrowd": 0,
        "segmentation": [[2.0, 2.0, 30.0, 30.0], [1.0, 1.0, 9.0, 1.0, 9.0, 9.0]],
    }
    inst = rasterize_instances([ann], 40, 40)
    triangle = _ann_mask({"segmentation": [ann["segmentation"][1]]}, 40, 40)
    assert triangle.sum() > 20 and inst[20, 20] == 0  # pycocotools alone would paint a 28x28 box
    np.testing.assert_array_equal(inst == 1, triangle)


def _coco_source(tmp_path: Path, real_fixtures: Path, rikai) -> Path:
    """A COCO-Stuff source from the real rikai annotations: blank JPEGs of the JSON sizes, a stuff
    JSON without annotations (labels then come from the things), the official labels.txt."""
    data, _ = rikai
    src = tmp_path / "coco"
    (src / "train2017").mkdir(parents=True)
    (src / "annotations").mkdir()
    shutil.copy(real_fixtures / "cocostuff/labels.txt", src)
    for i, image in enumerate(data["images"][:6]):
        Image.new("RGB", (image["width"], image["height"]), (10 * i, 80, 120)).save(
            src / "train2017" / image["file_name"]
        )
    keep = {im["id"] for im in data["images"][:6]}
    subset = {"images": data["images"][:6], "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
    (src / "annotations/instances_train2017.json").write_text(json.dumps(subset))
    (src / "annotations/stuff_train2017.json").write_text(json.dumps({"images": data["images"][:6], "annotations": []}))
    return src


def test_coco_stuff_from_json_end_to_end(tmp_path, real_fixtures, rikai):
    data, names = rikai
    src = _coco_source(tmp_path, real_fixtures, rikai)
    out = tmp_path / "prepared"
    stats = ingest_dataset("coco-stuff", src, out, workers=2)
    assert stats["num_samples"] == {"train": 6, "val": 0}
    ds, files = PreparedDataset(out, "train"), as_files(out)
    for image in data["images"][:6]:
        sample = ds[ds.ids.index(Path(image["file_name"]).stem)]
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        n = len(anns)
        inst, label = sample["instance"], sample["label"]
        for k, a in enumerate(anns, 1):  # label = category of the annotation that owns the pixel
            owned = inst == k
            if owned.any():
                assert set(np.unique(label[owned])) == {a["category_id"] - 1}
                assert ds.classes.names[a["category_id"] - 1] == names[a["category_id"]]
        assert (label[inst > n] == 255).all()  # no stuff annotations: the rest is unlabeled
        assert len(np.unique(inst[inst > n])) == len(np.unique(label[inst > n]))  # one id per background class
        np.testing.assert_array_equal(_read(files / f"edges/train/{sample['id']}.png"), instance_edges(inst))
        # blank JPEGs are stored byte for byte
        assert (files / f"images/train/{image['file_name']}").read_bytes() == (
            src / "train2017" / image["file_name"]
        ).read_bytes()


def test_crowd_policy_changes_the_output_and_the_hash(tmp_path, real_fixtures, rikai):
    src = _coco_source(tmp_path, real_fixtures, rikai)
    a = ingest_dataset("coco-stuff", src, tmp_path / "a", coco_crowd="ignore")
    b = ingest_dataset("coco-stuff", src, tmp_path / "b", coco_crowd="instance")
    fa, fb = as_files(tmp_path / "a"), as_files(tmp_path / "b")
    ma, mb = (pd.read_parquet(f / "manifest.parquet").set_index("id") for f in (fa, fb))
    crowd_images = {
        Path(im["file_name"]).stem
        for im in rikai[0]["images"][:6]
        if any(x["iscrowd"] and x["image_id"] == im["id"] for x in rikai[0]["annotations"])
    }
    assert crowd_images and (ma["source_hash"] != mb["source_hash"]).all()
    for stem in crowd_images:  # crowd pixels labelled (person) and owned by an id only with "instance"
        la, lb = _read(fa / ma.loc[stem, "label"]), _read(fb / mb.loc[stem, "label"])
        assert (la == 255).sum() > (lb == 255).sum()
    assert a["num_samples"] == b["num_samples"]


def test_coco_stuff_stuffthingmaps_with_instances_json(tmp_path, real_fixtures):
    """Val image 139: its real stuffthingmap, and the two real person polygons of detectron2's test."""
    src = tmp_path / "coco"
    (src / "val2017").mkdir(parents=True)
    _link(src / "val2017/000000000139.jpg", real_fixtures / SPADE / "val_img/000000000139.jpg")
    _link(
        src / "stuffthingmaps_trainval2017/val2017/000000000139.png",
        real_fixtures / SPADE / "val_label/000000000139.png",
    )
    _link(src / "annotations/instances_val2017.json", real_fixtures / "coco/val2017_partial_139_285_detectron2.json")
    shutil.copy(real_fixtures / "cocostuff/labels.txt", src)
    out = tmp_path / "prepared"
    ingest_dataset("coco-stuff", src, out, instance_background="none")
    sample = PreparedDataset(out, "val")[0]
    label = sample["label"]
    np.testing.assert_array_equal(label, _read(real_fixtures / SPADE / "val_label/000000000139.png"))
    anns = json.loads((real_fixtures / "coco/val2017_partial_139_285_detectron2.json").read_text())["annotations"]
    m1, m2 = (_ann_mask(a, 426, 640) for a in anns)
    np.testing.assert_array_equal(sample["instance"] == 2, m2)
    np.testing.assert_array_equal(sample["instance"] == 1, m1 & ~m2)
    assert set(np.unique(sample["instance"])) == {0, 1, 2}
    # the stuffthingmap labels the person polygon (230831) as person, bar a table that overlaps it
    person = label[m1]
    assert (person == 0).mean() > 0.95


def test_coco_stuff_bad_layouts(tmp_path, real_fixtures):
    src = tmp_path / "coco"
    (src / "val2017").mkdir(parents=True)
    _link(src / "val2017/000000000139.jpg", real_fixtures / SPADE / "val_img/000000000139.jpg")
    with pytest.raises(IngestError, match="labels.txt: missing class file"):
        ingest_dataset("coco-stuff", src, tmp_path / "out")
    shutil.copy(real_fixtures / "cocostuff/labels.txt", src)
    with pytest.raises(IngestError, match="no labels for val2017"):
        ingest_dataset("coco-stuff", src, tmp_path / "out")
    (src / "annotations").mkdir()
    (src / "annotations/stuff_val2017.json").write_text('{"images": [')
    with pytest.raises(IngestError, match="stuff_val2017.json: malformed JSON"):
        ingest_dataset("coco-stuff", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- ADE20K -----------------------------------------------------------------------------------


def test_object_info_txt_preferred_csv_accepted(real_fixtures, tmp_path):
    root = real_fixtures / "ade20k/sceneparsing"
    both = read_object_info(root)  # the folder has both files: the .txt wins
    (tmp_path / "objectInfo150.csv").write_bytes((root / "objectInfo150.csv").read_bytes())
    from_csv = read_object_info(tmp_path)
    assert len(both) == len(from_csv) == 151 and both[0]["name"] == from_csv[0]["name"] == "other"
    assert both[1]["name"] == "wall" and both[2]["name"] == "building" and both[150]["name"] == "flag"
    assert both[45]["name"] == "chest of drawers" and from_csv[45]["name"] == "chest"  # csv: ';' inside names
    differ = [i for i in range(151) if both[i]["name"] != from_csv[i]["name"]]
    assert len(differ) == 14 and all(both[i]["name"].startswith(from_csv[i]["name"] + " ") for i in differ)


def test_ade20k_scene_parsing_labels_identical(tmp_path, real_fixtures):
    src = tmp_path / "ade"
    _link(src / "images", real_fixtures / "ade20k/sceneparsing/ADEChallengeData2016/images")
    _link(src / "annotations", real_fixtures / "ade20k/sceneparsing/ADEChallengeData2016/annotations")
    shutil.copy(real_fixtures / "ade20k/sceneparsing/objectInfo150.csv", src)
    out = tmp_path / "prepared"
    stats = ingest_dataset("ade20k", src, out)
    assert stats["num_samples"] == {"train": 0, "val": 3}
    classes = json.loads((out / "classes.json").read_text())
    assert classes["label_nc"] == 151 and classes["ignore"] == [0] and "other" in classes["notes"]
    assert classes["has_instances"] is False
    files = as_files(out)
    manifest = pd.read_parquet(files / "manifest.parquet")
    assert manifest["instance"].isna().all() and manifest["edge"].isna().all()
    for row in manifest.itertuples():
        src_label = _read(src / f"annotations/validation/{row.id}.png")
        np.testing.assert_array_equal(_read(files / row.label), src_label)
        assert src_label.max() <= 150 and 0 in src_label  # 'other' present, kept as class 0
    assert PreparedDataset(out, "val")[0]["instance"] is None


def test_ade20k_instance_pngs(tmp_path, real_fixtures):
    """Places-challenge instance maps (R = Instance100 class, G = instance number): synthesized in
    that documented format over a real label map, as no real sample is public."""
    src = tmp_path / "ade"
    _link(src / "images", real_fixtures / "ade20k/sceneparsing/ADEChallengeData2016/images")
    _link(src / "annotations", real_fixtures / "ade20k/sceneparsing/ADEChallengeData2016/annotations")
    shutil.copy(real_fixtures / "ade20k/sceneparsing/objectInfo150.csv", src)
    (src / "annotations_instance/validation").mkdir(parents=True)
    for name in ("ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"):
        h, w = _read(src / f"annotations/validation/{name}.png").shape
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[10:40, 10:60] = (3, 1, 0)  # object 1 of class 3
        rgb[30:70, 50:90] = (7, 2, 0)  # object 2 of class 7, covering part of object 1
        rgb[100:120, 5:25] = (3, 2, 0)  # the same G as object 2 but another class: a third object
        Image.fromarray(rgb).save(src / f"annotations_instance/validation/{name}.png")
    out = tmp_path / "prepared"
    ingest_dataset("ade20k", src, out, instance_background="none")
    inst = PreparedDataset(out, "val")[0]["instance"]
    assert set(np.unique(inst)) == {0, 1, 2, 3}
    assert inst[20, 20] == 1 and inst[50, 60] == 3 and inst[110, 10] == 2 and inst[5, 5] == 0
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (5, 9, 0)
    assert instance_from_rgb(rgb).tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_full_ade_conversion_reproduces_the_challenge_png(real_fixtures):
    folder = real_fixtures / "ade20k/sceneparsing/convertFromADE"
    lut = read_map_from_ade(folder / "mapFromADE.txt")  # tabs and spaces mixed
    assert lut[2978] == 1 and lut[312] == 2 and lut[2855] == 5
    raw = _read(folder / "ADE_train_00000970_raw.png")
    assert raw.shape == (768, 1024, 3)
    label, inst = convert_seg(raw, lut, 512)
    expected = _read(folder / "ADE_train_00000970_challenge.png")
    assert label.shape == expected.shape == (512, 683)
    np.testing.assert_array_equal(label, expected)
    assert target_size(1024, 768, 512) == (683, 512) and target_size(700, 1400, 512) == (512, 1024)
    assert target_size(900, 900, 512) == (900, 900) and target_size(500, 300, 512) == (500, 300)


FULL = "ade20k/full/ADE20K_2021_17_01/images/ADE/training/urban/street"


@pytest.mark.parametrize("name", ["ADE_train_00016869", "ADE_train_00016900", "ADE_train_00016964"])
def test_full_ade_2021_classes_match_the_json_names(real_fixtures, name):
    lut = read_map_from_ade(real_fixtures / "ade20k/sceneparsing/convertFromADE/mapFromADE.txt")
    table = read_object_info(real_fixtures / "ade20k/sceneparsing")
    meta = json.loads((real_fixtures / FULL / f"{name}.json").read_text())["annotation"]
    objects = [o for o in meta["object"] if o["parts"]["part_level"] == 0]
    seg = _read(real_fixtures / FULL / f"{name}_seg.png")
    assert list(seg.shape) == meta["imsize"]
    label, inst = convert_seg(seg, lut, short_side=10_000)  # no resize: compare at full resolution
    full = seg[..., 0].astype(np.int64) // 10 * 256 + seg[..., 1]
    by_ndx = {o["name_ndx"]: o["name"] for o in objects}
    checked = 0
    for cls in np.unique(full):
        idx150 = int(lut[cls]) if cls < lut.size else 0
        assert (label[full == cls] == idx150).all()
        if cls and idx150:  # a mapped class: same first name in the JSON and in objectInfo150
            assert by_ndx[cls].split(",")[0].strip() == table[idx150]["name"], (cls, by_ndx[cls])
            checked += 1
    assert checked >= 4
    # one instance id per (non-part) object; B is 0 exactly where nothing is annotated
    assert inst.max() == len(objects) and ((inst == 0) == (full == 0)).all()


def test_full_ade_2021_end_to_end(tmp_path, real_fixtures):
    src = tmp_path / "full"
    _link(src / "images", real_fixtures / "ade20k/full/ADE20K_2021_17_01/images")
    shutil.copy(real_fixtures / "ade20k/sceneparsing/convertFromADE/mapFromADE.txt", src)
    shutil.copy(real_fixtures / "ade20k/sceneparsing/objectInfo150.csv", src)
    out = tmp_path / "prepared"
    with pytest.raises(IngestError, match=r"ADE_train_00016869_seg.png: label without its image"):
        ingest_dataset("ade20k-full", src, out)
    stats = ingest_dataset("ade20k-full", src, out, on_error="skip")
    assert stats["num_samples"]["train"] == 1 and len(stats["skipped"]) == 2  # two .jpg were not copied
    ds = PreparedDataset(out, "train")
    sample = ds[0]
    assert sample["label"].shape == (512, 768) and sample["image"].shape == (512, 768, 3)  # 2200x1467 -> short side 512
    names = {ds.classes.names[v] for v in np.unique(sample["label"])}
    lut = read_map_from_ade(src / "mapFromADE.txt")
    meta = json.loads((real_fixtures / FULL / "ADE_train_00016964.json").read_text())["annotation"]
    mapped = {
        ds.classes.names[lut[o["name_ndx"]]]
        for o in meta["object"]
        if o["parts"]["part_level"] == 0 and o["name_ndx"] < lut.size and lut[o["name_ndx"]]
    }
    assert {"building", "car", "road", "tree"} <= names and names - {"other"} == mapped
    assert ds.classes.dataset == "ade20k-full" and ds.classes.label_nc == 151
    assert sample["instance"].max() > 20
    row = pd.read_parquet(out / "manifest.parquet").iloc[0]
    assert row["source"] == "images/ADE/training/urban/street/ADE_train_00016964.jpg"
