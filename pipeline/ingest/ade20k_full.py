"""The full ADE20K release (2021): ``*_seg.png`` files mapped to the 150 SceneParsing classes.

Class = R // 10 * 256 + G (a full-ADE index), mapped with ``mapFromADE.txt`` (columns: 150-class
index, full index; unmapped -> 0 "other"); instances = the distinct values of B (0 = none).
Maps whose short side is above ``short_side`` are resized (NEAREST) so it equals ``short_side``,
as the SceneParsing conversion script does. Expected in the source folder: the release's
``images/ADE/{training,validation}/...``, plus ``mapFromADE.txt`` and ``objectInfo150.csv``
(both from the SceneParsing toolkit).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.ingest.folder import ade20k_classes, read_image
from pipeline.ingest.writer import IngestError, SampleTask, hash_files


def read_map_from_ade(path: Path) -> np.ndarray:
    """Lookup table full-ADE index -> 150-class index (0 where unmapped)."""
    if not path.is_file():
        raise IngestError(f"{path}: missing mapFromADE.txt (from the SceneParsing toolkit's convertFromADE)")
    pairs = []
    for line in path.read_text().splitlines():
        parts = line.split()  # the file mixes tabs and spaces
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            pairs.append((int(parts[0]), int(parts[1])))
    lut = np.zeros(max(full for _, full in pairs) + 1, np.uint8)
    for idx150, full in pairs:
        lut[full] = idx150
    return lut


def _target_size(w: int, h: int, short_side: int) -> tuple[int, int]:
    if min(w, h) <= short_side or w == h and w <= short_side:
        return w, h
    scale = short_side / min(w, h)
    return int(round(w * scale)), int(round(h * scale))


def convert_seg(seg_rgb: np.ndarray, lut: np.ndarray, short_side: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """``_seg.png`` RGB -> (150-class label uint8, instance ids uint16), resized NEAREST if large."""
    r, g, b = (seg_rgb[..., i].astype(np.int64) for i in range(3))
    full = r // 10 * 256 + g
    label = np.where(full < len(lut), lut[np.minimum(full, len(lut) - 1)], 0).astype(np.uint8)
    _, inst = np.unique(b, return_inverse=True)
    inst = inst.reshape(b.shape).astype(np.uint16)
    if b.min() > 0:
        inst = inst + 1
    h, w = label.shape
    tw, th = _target_size(w, h, short_side)
    if (tw, th) != (w, h):
        label = np.array(Image.fromarray(label).resize((tw, th), Image.NEAREST))
        inst = np.array(Image.fromarray(inst).resize((tw, th), Image.NEAREST))
    return label, inst


def _load(image: str, seg: str, lut_path: str, short_side: int):
    lut = read_map_from_ade(Path(lut_path))
    with Image.open(seg) as im:
        label, inst = convert_seg(np.array(im.convert("RGB")), lut, short_side)
    data, ext, arr = read_image(Path(image))
    if arr.shape[:2] != label.shape:
        resized = np.array(Image.fromarray(arr).resize(label.shape[::-1], Image.BICUBIC))
        import io

        buf = io.BytesIO()
        Image.fromarray(resized).save(buf, format="JPEG", quality=95)
        return (buf.getvalue(), ".jpg", resized), label, inst
    return (data, ext, arr), label, inst


def ade20k_full_tasks(source: Path, short_side: int = 512) -> tuple[list[SampleTask], dict]:
    lut_path = source / "mapFromADE.txt"
    read_map_from_ade(lut_path)  # fail early with a clear message
    entries = ade20k_classes(source)
    tasks = []
    for split, sub in (("train", "training"), ("val", "validation")):
        for seg in sorted((source / "images" / "ADE" / sub).rglob("*_seg.png")):
            stem = seg.name[: -len("_seg.png")]
            image = seg.with_name(f"{stem}.jpg")
            files = (str(image), str(seg))
            digest = hash_files([image, seg, lut_path] if image.is_file() else [seg], f"ade20k-full/1:{short_side}")
            tasks.append(SampleTask(stem, split, str(seg.relative_to(source)), digest,
                                    partial(_load, str(image), str(seg), str(lut_path), short_side), files))
    classes = {"format_version": 1, "dataset": "ade20k-full", "label_nc": 151, "dontcare": 255,
               "contain_dontcare_label": True, "has_instances": True, "classes": entries, "ignore": [0]}
    return tasks, classes
