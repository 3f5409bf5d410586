"""The full ADE20K release (ADE20K_2021_17_01): ``*_seg.png`` mapped to the 150 SceneParsing classes.

Source layout::

    <source>/images/ADE/{training,validation}/<scene folders>/ADE_*.jpg and ADE_*_seg.png
    <source>/mapFromADE.txt                     from the SceneParsing toolkit (convertFromADE/)
    <source>/objectInfo150.txt | .csv           from the SceneParsing toolkit (.txt preferred)

This follows the toolkit's convertFromADE.m: maps whose short side exceeds
``settings.ade20k_short_side`` (512) are resized NEAREST so that it equals it (square images are
left alone, as there); full class = R // 10 * 256 + G, mapped to 0..150 with mapFromADE.txt
(columns: 150-class index, full index; tabs and spaces mixed; unmapped -> 0 'other'). Labels then
follow the ``ade20k`` convention (label_nc 151, 0 = other). Instances: each distinct B value > 0
is one object (B is 0 exactly where nothing is annotated), ids 1..k in B order. A resized image is
stored as JPEG (quality 95, no chroma subsampling), the one place where an image is re-encoded;
others keep their bytes. Part maps (``_parts_N.png``) are not used.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from gaugan.classes import ClassTable
from pipeline.datasets.ade20k import ade20k_class_table, read_object_info
from pipeline.datasets.common import image_resized, load_image, with_instances
from pipeline.datasets.writer import Loaded, SampleTask
from pipeline.errors import IngestError

SPLITS = (("train", "training"), ("val", "validation"))


def read_map_from_ade(path: Path) -> np.ndarray:
    """mapFromADE.txt -> lookup table full-ADE index -> 150-class index (0 where unmapped)."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: missing mapFromADE.txt (from the SceneParsing toolkit's convertFromADE/)")
    pairs = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()  # the file mixes tabs and spaces
        if not parts:
            continue
        try:
            idx150, full = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise IngestError(
                f"{path}:{lineno}: malformed line {line!r}; expected '<150-class idx> <full idx>'"
            ) from None
        if not 1 <= idx150 <= 150 or full < 1:
            raise IngestError(f"{path}:{lineno}: index out of range in {line!r}")
        pairs.append((idx150, full))
    if not pairs:
        raise IngestError(f"{path}: no mappings listed")
    lut = np.zeros(max(full for _, full in pairs) + 1, np.uint8)
    for idx150, full in pairs:
        lut[full] = idx150
    return lut


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) after convertFromADE's resize: only the short side of a non-square image above
    ``short_side`` is brought down to it, the other side rounded half up."""
    if height < width and height > short_side:
        return int(np.floor(width / height * short_side + 0.5)), short_side
    if width < height and width > short_side:
        return short_side, int(np.floor(height / width * short_side + 0.5))
    return width, height


def convert_seg(seg_rgb: np.ndarray, lut: np.ndarray, short_side: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """``_seg.png`` RGB [H,W,3] -> (label uint8 0..150, instance ids uint16), resized NEAREST if large."""
    h, w = seg_rgb.shape[:2]
    tw, th = target_size(w, h, short_side)
    if (tw, th) != (w, h):
        seg_rgb = np.array(Image.fromarray(seg_rgb).resize((tw, th), Image.Resampling.NEAREST))
    r, g, b = (seg_rgb[..., i].astype(np.int64) for i in range(3))
    full = r // 10 * 256 + g
    label = np.where(full < lut.size, lut[np.minimum(full, lut.size - 1)], 0).astype(np.uint8)
    values, inverse = np.unique(b, return_inverse=True)
    inst = (inverse.reshape(b.shape) + (0 if values[0] == 0 else 1)).astype(np.uint16)
    return label, inst


def load_full(image: str, seg: str, lut_path: str, short_side: int) -> Loaded:
    lut = read_map_from_ade(Path(lut_path))
    try:
        with Image.open(seg) as im:
            if im.mode != "RGB":
                raise IngestError(f"{seg}: expected an RGB _seg.png, got mode {im.mode}")
            rgb = np.array(im)
    except OSError as err:
        raise IngestError(f"{seg}: unreadable segmentation ({err})") from None
    label, inst = convert_seg(rgb, lut, short_side)
    if not Path(image).is_file():
        raise IngestError(f"{seg}: label without its image (expected {image})")
    with Image.open(image) as im:
        size = im.size
    if size != rgb.shape[1::-1]:
        raise IngestError(f"{image}: image is {size[0]}x{size[1]} but its _seg.png is {rgb.shape[1]}x{rgb.shape[0]}")
    if label.shape[::-1] != size:
        return Loaded(image_resized(image, label.shape[::-1]), label, None, inst)
    return Loaded(load_image(image), label, None, inst)


def ade20k_full_tasks(source: Path, settings, classes: ClassTable | None = None) -> tuple[list[SampleTask], ClassTable]:
    """``classes``: the table to use (data.classes); None: names from the source's objectInfo150."""
    short_side = settings.ade20k_short_side
    lut_path = source / "mapFromADE.txt"
    read_map_from_ade(lut_path)  # fail early, with the file's name
    entries = read_object_info(source) if classes is None else []
    tasks = []
    for split, sub in SPLITS:
        root = source / "images" / "ADE" / sub
        if not root.is_dir():
            continue
        for seg in sorted(root.rglob("*_seg.png")):
            stem = seg.name[: -len("_seg.png")]
            image = seg.with_name(f"{stem}.jpg")
            tasks.append(
                SampleTask(
                    stem,
                    split,
                    image.relative_to(source).as_posix(),
                    (str(image), str(seg), str(lut_path)),
                    partial(load_full, str(image), str(seg), str(lut_path), short_side),
                    f"ade20k-full/1:short_side={short_side}",
                )
            )
    if classes is not None:
        return tasks, with_instances(classes, True)
    return tasks, ade20k_class_table("ade20k-full", entries, True)
