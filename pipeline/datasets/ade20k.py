"""ADE20K SceneParsing (ADEChallengeData2016), with the Places-challenge instance maps when present.

Source layout::

    <source>/objectInfo150.txt | objectInfo150.csv          the 150 class names (.txt preferred)
    <source>/images/{training,validation}/ADE_*.jpg
    <source>/annotations/{training,validation}/ADE_*.png    values 0..150, 0 = "other"
    <source>/annotations_instance/{training,validation}/ADE_*.png   optional (Places challenge 2017)

Labels keep the raw values 0..150 and 0 ("other objects", unannotated) is a class of its own:
label_nc 151 and no dontcare channel (``contain_dontcare_label: false``), so the networks take 151
channels with value v on channel v, exactly as the reference ADE20K generators were trained (its
label_nc 150 plus the dontcare channel that value 150 shares; its loader's intended shift by one
never took effect), and their checkpoints fit data prepared here. classes.json says so in
``notes``, lists 0 under ``ignore`` (mIoU follows the benchmark's protocol) and takes the built-in
``ade20k`` table's colours (pipeline/datasets/class_tables.py). A 255 in a label map is refused.

Instance PNGs: R = Instance100 category (0 = void), G = instance number. Each distinct (R, G)
with R > 0 becomes one id, 1..k in (R, G) order; the category itself is not needed since the
label map gives the classes. Remaining pixels follow ``settings.instance_background``.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from gaugan.classes import ClassTable
from pipeline.datasets.class_tables import builtin_table
from pipeline.datasets.common import (
    background_segments,
    default_color,
    image_files,
    load_image,
    read_index_map,
    with_instances,
)
from pipeline.datasets.writer import Loaded, SampleTask
from pipeline.errors import IngestError

SPLITS = (("train", "training"), ("val", "validation"))


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
    """The built-in ``ade20k`` table (151 channels, no dontcare, its palette) with the source's names."""
    names = tuple(str(e["name"]) for e in entries)
    return replace(builtin_table("ade20k", has_instances), dataset=dataset, names=names)


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


def ade20k_tasks(source: Path, settings, classes: ClassTable | None = None) -> tuple[list[SampleTask], ClassTable]:
    """``classes``: the table to use (data.classes); None: names from the source's objectInfo150."""
    entries = read_object_info(source) if classes is None else []
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
    if classes is not None:
        return tasks, with_instances(classes, has_inst)
    return tasks, ade20k_class_table("ade20k", entries, has_inst)
