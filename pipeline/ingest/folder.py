"""Plain folder datasets, the reference implementation's dataroot layout, and ADE20K.

``folder`` layout (custom datasets)::

    images/{train,val}/<name>.jpg|png
    labels/{train,val}/<name>.png        class indices, 255 = dontcare
    instances/{train,val}/<name>.png     optional, instance ids (0 = none)
    classes.json                         {"classes": [{"name": ..., "color": [r,g,b]}, ...]} or a list of names
    (or classes.txt: one class per line, "name" or "name,r,g,b")

``spade`` layout (NVlabs/SPADE dataroots): ``{train,val}_img``, ``{train,val}_label``,
``{train,val}_inst``. Its instance maps are the reference's uint8 maps (label values with a
running counter painted over objects); each distinct value becomes its own id here (value + 1),
so boundaries, which is all the model uses, are unchanged.

``ade20k`` (ADEChallengeData2016): ``images/{training,validation}/*.jpg``,
``annotations/{training,validation}/*.png`` and ``objectInfo150.csv``. Values stay 0..150 with
0 ("other") as a class of its own (label_nc 151), as the reference ADE20K checkpoints were trained.
"""

from __future__ import annotations

import colorsys
import csv
import json
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.ingest.writer import IngestError, SampleTask, hash_files

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def default_color(i: int) -> list[int]:
    r, g, b = colorsys.hsv_to_rgb((i * 0.61803) % 1.0, 0.65, 0.95)
    return [int(r * 255), int(g * 255), int(b * 255)]


def read_image(path: Path):
    """Decoded RGB array plus the original bytes, so JPEGs are stored without re-encoding."""
    data = path.read_bytes()
    with Image.open(path) as im:
        im.load()  # raises on truncated files
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        arr = np.array(im)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
        return _png(arr), ".png", arr
    ext = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
    return data, ext, arr


def _png(arr):
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def read_map(path: Path) -> np.ndarray:
    """Raw indices; never converted through a palette or to grey."""
    with Image.open(path) as im:
        im.load()
        arr = np.array(im)
    if arr.ndim != 2:
        raise IngestError(f"{path}: expected a single-channel index map, got shape {arr.shape}")
    return arr


def load_pair(image: str, label: str, instance: str | None, instance_mode: str = "ids"):
    img = read_image(Path(image))
    lab = read_map(Path(label))
    inst = None
    if instance is not None:
        inst = read_map(Path(instance)).astype(np.int64)
        if instance_mode == "spade":
            inst = inst + 1
    return img, lab, inst


def read_class_file(root: Path) -> list[dict]:
    if (root / "classes.json").is_file():
        try:
            data = json.loads((root / "classes.json").read_text())
        except json.JSONDecodeError as err:
            raise IngestError(f"{root / 'classes.json'}: malformed JSON ({err})") from None
        entries = data["classes"] if isinstance(data, dict) else data
        out = []
        for i, e in enumerate(entries):
            name = e if isinstance(e, str) else e["name"]
            color = (None if isinstance(e, str) else e.get("color")) or default_color(i)
            out.append({"index": i, "name": name, "color": list(color)})
        return out
    if (root / "classes.txt").is_file():
        out = []
        for i, line in enumerate(l for l in (root / "classes.txt").read_text().splitlines() if l.strip()):
            parts = [p.strip() for p in line.split(",")]
            color = [int(v) for v in parts[1:4]] if len(parts) >= 4 else default_color(i)
            out.append({"index": i, "name": parts[0], "color": color})
        return out
    raise IngestError(f"{root}: no class file; add classes.json or classes.txt (one class name per line)")


def _classes(dataset: str, entries: list[dict], has_instances: bool) -> dict:
    return {"format_version": 1, "dataset": dataset, "label_nc": len(entries), "dontcare": 255,
            "contain_dontcare_label": True, "has_instances": has_instances, "classes": entries}


def _pairs(image_dir: Path, label_dir: Path, inst_dir: Path | None, split: str, source_root: Path,
           instance_mode: str, settings_tag: str) -> list[SampleTask]:
    tasks = []
    if not image_dir.is_dir():
        return tasks
    for img in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        label = label_dir / f"{img.stem}.png"
        inst = inst_dir / f"{img.stem}.png" if inst_dir is not None else None
        if inst is not None and not inst.is_file():
            inst = None
        files = tuple(str(p) for p in (img, label, inst) if p is not None)
        if not label.is_file():
            tasks.append(SampleTask(img.stem, split, str(img.relative_to(source_root)), "missing-label",
                                    partial(_missing, str(img), str(label)), files))
            continue
        digest = hash_files([img, label, inst], settings_tag)
        tasks.append(SampleTask(img.stem, split, str(img.relative_to(source_root)), digest,
                                partial(load_pair, str(img), str(label), str(inst) if inst else None, instance_mode),
                                files))
    return tasks


def _missing(image: str, label: str):
    raise IngestError(f"{image}: image without label (expected {label})")


def folder_tasks(source: Path) -> tuple[list[SampleTask], dict]:
    entries = read_class_file(source)
    tasks = []
    for split in ("train", "val"):
        inst_dir = source / "instances" / split
        tasks += _pairs(source / "images" / split, source / "labels" / split,
                        inst_dir if inst_dir.is_dir() else None, split, source, "ids", "folder/1")
    has_inst = (source / "instances").is_dir()
    dataset = "folder"
    if (source / "classes.json").is_file():
        data = json.loads((source / "classes.json").read_text())
        if isinstance(data, dict) and data.get("dataset"):
            dataset = str(data["dataset"])
    return tasks, _classes(dataset, entries, has_inst)


def spade_tasks(source: Path) -> tuple[list[SampleTask], dict]:
    if (source / "classes.json").is_file() or (source / "classes.txt").is_file():
        entries = read_class_file(source)
    else:
        raise IngestError(f"{source}: the spade layout carries no class names; add classes.json or classes.txt "
                          "(for COCO-Stuff use --format coco-stuff with labels.txt)")
    tasks = []
    for split in ("train", "val"):
        inst_dir = source / f"{split}_inst"
        tasks += _pairs(source / f"{split}_img", source / f"{split}_label", inst_dir if inst_dir.is_dir() else None,
                        split, source, "spade", "spade/1")
    return tasks, _classes("spade", entries, (source / "train_inst").is_dir())


def ade20k_classes(source: Path) -> list[dict]:
    path = source / "objectInfo150.csv"
    if not path.is_file():
        raise IngestError(f"{path}: missing class file (objectInfo150.csv from the ADE20K SceneParsing release)")
    entries = [{"index": 0, "name": "other", "color": [0, 0, 0]}]
    with path.open() as fh:
        for row in csv.DictReader(fh):
            idx = int(row["Idx"])
            entries.append({"index": idx, "name": row["Name"].split(";")[0], "color": default_color(idx)})
    if len(entries) != 151:
        raise IngestError(f"{path}: expected 150 classes, found {len(entries) - 1}")
    return entries


def ade20k_tasks(source: Path) -> tuple[list[SampleTask], dict]:
    entries = ade20k_classes(source)
    tasks = []
    for split, sub in (("train", "training"), ("val", "validation")):
        tasks += _pairs(source / "images" / sub, source / "annotations" / sub, None, split, source, "ids", "ade20k/1")
    classes = _classes("ade20k", entries, False)
    classes["ignore"] = [0]  # the standard scene-parsing protocol leaves "other" out of mIoU
    return tasks, classes
