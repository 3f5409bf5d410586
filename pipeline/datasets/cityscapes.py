"""Cityscapes (fine annotations): the reference's third dataset.

Source layout (the official ``gtFine_trainvaltest`` and ``leftImg8bit_trainvaltest`` unpacked side by side)::

    <source>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <source>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png     8-bit, label ids 0..33
    <source>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png  16-bit (read as 32-bit)

Images and annotations are paired on the first three name parts (city, sequence, frame), as the
reference does; the sample id is those three parts. The ``test`` split has no public annotations
and is not read. ``*_color.png`` and ``*_polygons.json`` are not used.

Labels: the label ids as they are, 35 classes (cityscapesScripts' ids 0..33 and "license plate",
which ``labelIds.png`` never holds), no dontcare channel: the reference's cityscapes setting
(label_nc 35, ``contain_dontcare_label`` off). The class table is the built-in ``cityscapes`` one
(pipeline/datasets/class_tables.py) unless ``data.classes`` names another of 35 classes.

Instances: in ``instanceIds.png`` a value >= 1000 is ``labelId * 1000 + k``, object k of a class
with instances; a value below 1000 is the pixel's label id (background, or a crowd "group" region
without individual objects). Each distinct value >= 1000 becomes one id, 1..n in value order; the
other pixels follow ``settings.instance_background``: ``per_class`` (one id per label value after
the objects) gives exactly the edges the reference computes on the raw instanceIds map, ``none``
leaves them 0 (edges around objects only). An object whose id names another class than its label
pixel is refused (mismatched files).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from gaugan.classes import ClassTable
from pipeline.datasets.class_tables import builtin_table
from pipeline.datasets.common import background_segments, with_instances
from pipeline.datasets.folder import load_pair
from pipeline.datasets.writer import Loaded, SampleTask
from pipeline.errors import IngestError

SPLITS = ("train", "val")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
OBJECT_ID_BASE = 1000  # instanceIds: labelId * 1000 + k for objects, labelId below


def sample_key(name: str) -> str:
    """``aachen_000000_000019_leftImg8bit.png`` -> ``aachen_000000_000019`` (the first three name parts)."""
    return "_".join(name.split("_")[:3])


def instances_from_ids(raw: np.ndarray, label: np.ndarray, background: str, where: str = "") -> np.ndarray:
    """A raw ``instanceIds`` map -> instance ids (0 = none, 1..n objects in value order), uint16."""
    raw = raw.astype(np.int64)
    objects = raw >= OBJECT_ID_BASE
    values = raw[objects]
    wrong = objects & (raw // OBJECT_ID_BASE != label)
    if wrong.any():
        y, x = (int(v[0]) for v in np.nonzero(wrong))
        raise IngestError(
            f"{where}: instance id {int(raw[y, x])} at pixel ({x}, {y}) names label id {int(raw[y, x]) // 1000} "
            f"but the label map has {int(label[y, x])} there; the labelIds and instanceIds files do not belong together"
        )
    ids = np.zeros(raw.shape, np.uint16)
    if values.size:
        uniq, inverse = np.unique(values, return_inverse=True)
        if uniq.size > 65535:
            raise IngestError(f"{where}: {uniq.size} objects do not fit in a 16-bit instance map")
        ids[objects] = (inverse + 1).astype(np.uint16)
    return background_segments(ids, label) if background == "per_class" else ids


def load_cityscapes(image: str, label: str, instance: str | None, background: str) -> Loaded:
    sample = load_pair(image, label, instance)  # the raw instanceIds, then mapped here
    if instance is None or sample.instance is None:
        return sample
    raw, lab = sample.instance, sample.label
    if raw.shape != lab.shape:
        raise IngestError(
            f"{instance}: instance map is {raw.shape[1]}x{raw.shape[0]}, labels {lab.shape[1]}x{lab.shape[0]}"
        )
    return replace(sample, instance=instances_from_ids(raw, lab, background, instance))


def cityscapes_tasks(source: Path, settings, classes: ClassTable | None = None) -> tuple[list[SampleTask], ClassTable]:
    """One task per ``leftImg8bit`` image of the train and val splits; ``classes``: data.classes (None: built in)."""
    background = settings.instance_background
    has_inst = next(iter(source.glob(f"gtFine/*/*/*{INSTANCE_SUFFIX}")), None) is not None
    tasks = []
    for split in SPLITS:
        image_root = source / "leftImg8bit" / split
        if not image_root.is_dir():
            continue
        for img in sorted(image_root.glob(f"*/*{IMAGE_SUFFIX}")):
            key, city = sample_key(img.name), img.parent.name
            gt = source / "gtFine" / split / city
            label = gt / f"{key}{LABEL_SUFFIX}"
            inst = gt / f"{key}{INSTANCE_SUFFIX}" if has_inst else None
            files = tuple(str(p) for p in (img, label, inst) if p is not None)
            load = partial(load_cityscapes, str(img), str(label), str(inst) if inst else None, background)
            tag = f"cityscapes/1:background={background if has_inst else '-'}"
            tasks.append(SampleTask(key, split, img.relative_to(source).as_posix(), files, load, tag))
    table = builtin_table("cityscapes") if classes is None else classes
    return tasks, with_instances(table, has_inst)
