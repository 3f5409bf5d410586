"""ADE20K SceneParsing (ADEChallengeData2016), with the Places-challenge instance maps when present.

Source layout::

    <source>/objectInfo150.txt | objectInfo150.csv          the 150 class names (.txt preferred)
    <source>/images/{training,validation}/ADE_*.jpg
    <source>/annotations/{training,validation}/ADE_*.png    values 0..150, 0 = "other"
    <source>/annotations_instance/{training,validation}/ADE_*.png   optional (Places challenge 2017)

Labels keep the raw values 0..150 and 0 ("other objects", unannotated) is a class of its own:
label_nc 151, as the reference ADE20K checkpoints were trained (the reference loader's intended
shift by one never took effect). classes.json says so in ``notes`` and lists 0 under ``ignore``, so
mIoU follows the standard protocol. Nothing is 255 here.

Instance PNGs: R = Instance100 category (0 = void), G = instance number. Each distinct (R, G)
with R > 0 becomes one id, 1..k in (R, G) order; the category itself is not needed since the
label map gives the classes. Remaining pixels follow ``settings.instance_background``.
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from gaugan.classes import ClassTable
from pipeline.datasets.common import (
    background_segments,
    class_table,
    default_color,
    image_files,
    load_image,
    read_index_map,
)
from pipeline.datasets.writer import Loaded, SampleTask
from pipeline.errors import IngestError

SPLITS = (("train", "training"), ("val", "validation"))
NOTES = (
    "label 0 is ADE20K's 'other' (unannotated) as a class of its own and 1..150 are the SceneParsing "
    "classes, as the reference ADE20K checkpoints were trained; 0 is left out of mIoU ('ignore')"
)


def read_object_info(source: Path) -> list[dict]:
    """The 150 class names -> 151 entries, 0 = other.

    objectInfo150.txt (tab-separated Idx Ratio Train Val Name, synonyms split by ', ') is preferred:
    the .csv variant (Idx,Ratio,Train,Val,Stuff,Name) joins synonyms *and* words with ';', so its
    multi-word names can only be cut at the first word (14 of them, e.g. 'chest' for 'chest of
    drawers'), as other code bases do.
    """
    csv_path, txt_path = source / "objectInfo150.csv", source / "objectInfo150.txt"
    names: dict[int, str] = {}
    path = txt_path if txt_path.is_file() else csv_path
    try:
        if txt_path.is_file():
            lines = [row for row in txt_path.read_text().splitlines() if row.strip()]
            for line in lines[1:]:
                parts = line.split("\t")
                names[int(parts[0])] = parts[-1].split(",")[0].strip()
        elif csv_path.is_file():
            with csv_path.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    names[int(row["Idx"])] = row["Name"].split(";")[0].strip()
        else:
            raise IngestError(
                f"{source}: missing class file objectInfo150.txt or objectInfo150.csv "
                "(from the ADE20K SceneParsing release)"
            )
    except (KeyError, ValueError, IndexError, TypeError, UnicodeDecodeError) as err:
        raise IngestError(f"{path}: malformed class file ({type(err).__name__}: {err})") from None
    if sorted(names) != list(range(1, 151)):
        raise IngestError(f"{path}: expected classes 1..150, found {len(names)}")
    return [{"index": 0, "name": "other", "color": [0, 0, 0]}] + [
        {"index": i, "name": names[i], "color": default_color(i)} for i in range(1, 151)
    ]


def ade20k_class_table(dataset: str, entries: list[dict], has_instances: bool) -> ClassTable:
    return class_table(dataset, entries, has_instances=has_instances, ignore=[0], notes=NOTES)


def instance_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Places-challenge instance PNG [H,W,3] -> ids (1..k per distinct (R, G) with R > 0, else 0)."""
    r, g = rgb[..., 0].astype(np.int32), rgb[..., 1].astype(np.int32)
    key = np.where(r > 0, r * 256 + g + 1, 0)
    values, inverse = np.unique(key, return_inverse=True)
    ids = inverse.reshape(key.shape) + (0 if values[0] == 0 else 1)
    return ids.astype(np.uint16)


def load_ade20k(image: str, label: str, instance: str | None, background: str) -> Loaded:
    if not Path(label).is_file():
        raise IngestError(f"{image}: image without label (expected {label})")
    img = load_image(image)
    lab, lab_png = read_index_map(label, "label map")
    inst = None
    if instance is not None:
        try:
            with Image.open(instance) as im:
                rgb = np.array(im.convert("RGB"))  # an RGB-coded map: R and G carry the ids
        except FileNotFoundError:
            raise IngestError(f"{image}: instance map missing (expected {instance})") from None
        except OSError as err:
            raise IngestError(f"{instance}: unreadable instance map ({err})") from None
        inst = instance_from_rgb(rgb)
        if background == "per_class" and inst.shape == lab.shape:
            inst = background_segments(inst, lab)
    return Loaded(img, lab, lab_png, inst)


def ade20k_tasks(source: Path, settings) -> tuple[list[SampleTask], ClassTable]:
    entries = read_object_info(source)
    background = settings.instance_background
    has_inst = (source / "annotations_instance").is_dir()
    tasks = []
    for split, sub in SPLITS:
        image_dir = source / "images" / sub
        if not image_dir.is_dir():
            continue
        for img in image_files(image_dir):
            label = source / "annotations" / sub / f"{img.stem}.png"
            inst = source / "annotations_instance" / sub / f"{img.stem}.png" if has_inst else None
            files = tuple(str(p) for p in (img, label, inst) if p is not None)
            tasks.append(
                SampleTask(
                    img.stem,
                    split,
                    img.relative_to(source).as_posix(),
                    files,
                    partial(load_ade20k, str(img), str(label), str(inst) if inst else None, background),
                    f"ade20k/1:background={background if has_inst else '-'}",
                )
            )
    return tasks, ade20k_class_table("ade20k", entries, has_inst)
