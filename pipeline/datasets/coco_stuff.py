"""COCO-Stuff 2017: images, 182-class label maps and instance maps from the COCO instances JSON.

Source layout (either the COCO download unpacked side by side, or the cocostuff repository's)::

    <source>/labels.txt                                   the class list (required)
    <source>/train2017/*.jpg, val2017/*.jpg               or images/{train2017,val2017}/
    <source>/stuffthingmaps_trainval2017/{train2017,val2017}/*.png   or annotations/{train2017,val2017}/
    <source>/annotations/instances_{train,val}2017.json   optional: instance maps
    <source>/annotations/stuff_{train,val}2017.json       labels when a split has no stuffthingmaps

Labels are the stuffthingmaps values, stored unchanged: 0..181 = JSON id - 1, 255 = unlabeled,
label_nc 182 (the 11 thing ids without data keep their channels). ``labels.txt`` is read by
content: the official file is JSON-numbered (``0: unlabeled``, then ``1: person`` ...), a
PNG-numbered one starts with ``0: person``. Without stuffthingmaps the label map is rasterized from
the JSON: start at 255, paint each stuff annotation (92..182 -> id - 1; 183 'other' is skipped:
its pixels are the things), then the things of the instances JSON, in file order, last wins.

Instance maps (when the instances JSON is present): one id per annotation, 1..n in file order,
painted in that order so the last annotation wins where they overlap (as the reference's maps
show). Polygons (parts with fewer than 6 numbers are dropped: pycocotools would read 4 numbers as a
box) and uncompressed crowd RLEs go through pycocotools; the RLE runs are then painted directly,
so the cost follows the object's area, not the frame's. Crowd annotations follow
``settings.coco_crowd``: "ignore" (default, as the reference) gives them no id and, when labels
come from the JSON, no label either (as cocostuffapi's default); "instance" paints them like any
other annotation. With ``settings.instance_background == "per_class"`` (default) the pixels left
at 0 then get one id per label value (see common.background_segments), so edges also mark stuff
boundaries, as the reference's maps do.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np

from gaugan.classes import ClassTable
from pipeline.datasets.common import (
    background_segments,
    class_table,
    default_color,
    image_files,
    load_image,
    read_index_map,
    with_instances,
)
from pipeline.datasets.writer import Loaded, SampleTask
from pipeline.errors import IngestError

NUM_CLASSES = 182
_LINE = re.compile(r"^\s*(\d+)\s*:\s*(.+?)\s*$")


def read_labels_txt(path: Path) -> list[dict]:
    """labels.txt -> 182 entries {index (PNG value), name, color}; numbering detected by content."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: missing class file (labels.txt from the COCO-Stuff release)")
    pairs = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise IngestError(f"{path}:{lineno}: malformed line {line!r}; expected 'N: name'")
        pairs.append((int(m.group(1)), m.group(2)))
    if not pairs:
        raise IngestError(f"{path}: no classes listed")
    shift = 1 if pairs[0] == (0, "unlabeled") else 0  # JSON numbering: PNG value = id - 1
    names = {n - shift: name for n, name in pairs if not (shift and n == 0)}
    if sorted(names) != list(range(NUM_CLASSES)):
        raise IngestError(
            f"{path}: expected classes 0..{NUM_CLASSES - 1} after numbering detection "
            f"({'JSON' if shift else 'PNG'} numbering), found {len(names)} entries"
        )
    return [{"index": i, "name": names[i], "color": default_color(i)} for i in range(NUM_CLASSES)]


# --- RLE decoding and painting ------------------------------------------------------------------


def rle_string_counts(counts: str | bytes) -> np.ndarray:
    """Run lengths of a compressed COCO RLE string, decoded with vectorised NumPy.

    Each value is stored in 5-bit groups (chars - 48, 0x20 = more groups follow, 0x10 in the last
    group = negative); from the third value on, each is a delta to the value two places before.
    """
    raw = counts.encode() if isinstance(counts, str) else bytes(counts)
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64)
    last = np.flatnonzero((c & 0x20) == 0)  # last char of each value
    if last.size == 0 or last[-1] != c.size - 1:
        raise ValueError("truncated RLE string")
    first = np.concatenate(([0], last[:-1] + 1))
    nchars = last - first + 1
    shift = 5 * (np.arange(c.size) - np.repeat(first, nchars))
    vals = np.add.reduceat((c & 0x1F) << shift, first)
    vals = np.where((c[last] & 0x10) != 0, vals - (np.int64(1) << (5 * nchars)), vals)
    out = vals.copy()
    out[1::2] = np.cumsum(vals[1::2])  # 1, 3, 5, ...: delta to two back
    if out.size > 2:
        out[2::2] = np.cumsum(vals[2::2])  # 2 is absolute, 4, 6, ... deltas
    return out


def paint_runs(canvas_t: np.ndarray, counts: np.ndarray, value: int) -> None:
    """Paint the 1-runs of column-major RLE ``counts`` with ``value`` into ``canvas_t`` (the
    transposed [W,H] C-contiguous canvas, whose flat order is the RLE's)."""
    flat = canvas_t.reshape(-1)
    if int(counts.sum()) != flat.size:
        raise ValueError(f"RLE covers {int(counts.sum())} pixels, the image has {flat.size}")
    begins = np.cumsum(counts) - counts
    starts, lengths = begins[1::2], counts[1::2]
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    if lengths.size == 0:
        return
    offsets = np.cumsum(lengths) - lengths
    flat[np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))] = value


def segmentation_runs(segmentation, height: int, width: int) -> list[np.ndarray]:
    """RLE run lengths (one array per part) of a COCO segmentation: polygons, RLE dict or string."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polys = [p for p in segmentation if len(p) >= 6]
        if not polys:
            return []
        return [rle_string_counts(r["counts"]) for r in mask_utils.frPyObjects(polys, height, width)]
    if isinstance(segmentation, dict):
        size = [int(v) for v in segmentation.get("size", [])]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image's [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed (crowd): the run lengths themselves
            return [np.asarray(counts, dtype=np.int64)]
        return [rle_string_counts(counts)]
    raise ValueError(f"unknown segmentation type {type(segmentation).__name__}")


def rasterize_instances(
    annotations: list[dict], height: int, width: int, crowd: str = "ignore", label: np.ndarray | None = None
) -> np.ndarray:
    """COCO annotations of one image -> int32 [H,W] instance ids (1..n in file order, last wins).

    With ``label`` given, each painted annotation also writes ``category_id - 1`` into it.
    """
    inst_t = np.zeros((width, height), np.int32)
    label_t = label.T.copy() if label is not None else None
    next_id = 1
    for ann in annotations:
        if ann.get("iscrowd", 0) and crowd == "ignore":
            continue
        try:
            runs = segmentation_runs(ann["segmentation"], height, width)
            for counts in runs:
                paint_runs(inst_t, counts, next_id)
                if label_t is not None:
                    cat = int(ann["category_id"])
                    if not 1 <= cat <= 91:
                        raise ValueError(f"thing category_id {cat} outside 1..91")
                    paint_runs(label_t, counts, cat - 1)
        except (KeyError, TypeError, ValueError) as err:
            raise IngestError(f"annotation {ann.get('id')}: bad annotation ({type(err).__name__}: {err})") from None
        next_id += 1
    if label is not None:
        assert label_t is not None  # made from label above
        label[...] = label_t.T
    return np.ascontiguousarray(inst_t.T)


def rasterize_stuff(stuff_annotations: list[dict], height: int, width: int) -> np.ndarray:
    """stuff JSON annotations of one image -> uint8 label map (id - 1; 255 elsewhere; 183 skipped)."""
    label_t = np.full((width, height), 255, np.uint8)
    for ann in stuff_annotations:
        cat = int(ann["category_id"])
        if cat == 183:  # 'other': the thing pixels, painted from the instances JSON
            continue
        if not 92 <= cat <= 182:
            raise IngestError(f"stuff annotation {ann.get('id')}: category_id {cat} outside 92..183")
        try:
            for counts in segmentation_runs(ann["segmentation"], height, width):
                paint_runs(label_t, counts, cat - 1)
        except (KeyError, TypeError, ValueError) as err:
            raise IngestError(f"stuff annotation {ann.get('id')}: bad segmentation ({err})") from None
    return np.ascontiguousarray(label_t.T)


# --- the source -----------------------------------------------------------------------------


def _first_dir(*candidates: Path) -> Path | None:
    return next((p for p in candidates if p.is_dir()), None)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IngestError(f"{path}: malformed JSON ({err})") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise IngestError(f"{path}: not a COCO annotation file (needs 'images' and 'annotations' lists)")
    return data


def _index(data: dict, path: Path) -> tuple[dict, dict]:
    """file stem -> image entry; image id -> its annotations in file order."""
    try:
        images: dict = {}
        ids: dict = {}
        for im in data["images"]:
            stem = Path(im["file_name"]).stem
            for key, index, what in ((stem, images, "file name"), (im["id"], ids, "id")):
                if key in index:
                    raise IngestError(
                        f"{path}: two image entries share the {what} {key!r} ({index[key]['file_name']} and "
                        f"{im['file_name']}); a COCO file lists each image once: remove the duplicate"
                    )
                index[key] = im
        anns = defaultdict(list)
        for a in data["annotations"]:
            anns[a["image_id"]].append(a)
    except (KeyError, TypeError) as err:
        raise IngestError(f"{path}: malformed COCO entry (missing {err})") from None
    return images, anns


def load_coco_sample(
    image: str,
    label_map: str | None,
    height: int | None,
    width: int | None,
    annotations: list | None,
    stuff: list | None,
    crowd: str,
    background: str,
) -> Loaded:
    img = load_image(image)
    if height is not None and (img.width, img.height) != (width, height):
        raise IngestError(
            f"{image}: the annotation JSON says {width}x{height} but the image is {img.width}x{img.height}"
        )
    h, w = img.height, img.width
    label_png = None
    if label_map is not None:
        if not Path(label_map).is_file():
            raise IngestError(f"{image}: image without label (expected {label_map})")
        label, label_png = read_index_map(label_map, "label map")
    else:
        label = rasterize_stuff(stuff or [], h, w)
    instance = None
    if annotations is not None:
        if label.shape != (h, w):  # let the writer report the size mismatch
            return Loaded(img, label, label_png, None)
        painted = label.copy() if label_map is None else None
        try:
            instance = rasterize_instances(annotations, h, w, crowd, painted)
        except IngestError as err:
            raise IngestError(f"{image}: {err}") from None
        if painted is not None:
            label = painted
        if background == "per_class":
            instance = background_segments(instance, label)
    return Loaded(img, label, label_png, instance)


def coco_stuff_tasks(source: Path, settings, classes: ClassTable | None = None) -> tuple[list[SampleTask], ClassTable]:
    """``classes``: the table to use (data.classes); None: ``labels.txt`` from the source."""
    entries = read_labels_txt(source / "labels.txt") if classes is None else []
    tasks: list[SampleTask] = []
    has_instances = []
    for split in ("train", "val"):
        found = _split_tasks(source, split, settings.coco_crowd, settings.instance_background)
        if found is not None:
            tasks += found[0]
            has_instances.append(found[1])
    if has_instances and any(has_instances) != all(has_instances):
        raise IngestError(
            f"{source / 'annotations'}: instances JSON for one split only; add the other's "
            "(instances_train2017.json / instances_val2017.json) or remove it"
        )
    if classes is not None:
        return tasks, with_instances(classes, any(has_instances))
    return tasks, class_table("coco-stuff", entries, has_instances=any(has_instances))


def _split_tasks(source: Path, split: str, crowd: str, background: str) -> tuple[list[SampleTask], bool] | None:
    """The tasks of one split and whether it has an instances JSON; None when the split has no images."""
    name = f"{split}2017"
    image_dir = _first_dir(source / name, source / "images" / name)
    map_dir = _first_dir(
        source / "stuffthingmaps_trainval2017" / name,
        source / "stuffthingmaps" / name,
        source / "annotations" / name,
    )
    inst_json = source / "annotations" / f"instances_{name}.json"
    stuff_json = source / "annotations" / f"stuff_{name}.json"
    if image_dir is None:
        return None
    if map_dir is None and not stuff_json.is_file():
        raise IngestError(
            f"{source}: no labels for {name}: expected stuffthingmaps_trainval2017/{name}/ "
            f"or annotations/stuff_{name}.json"
        )
    inst_images, inst_anns = _index(_read_json(inst_json), inst_json) if inst_json.is_file() else ({}, {})
    if map_dir is None:  # the indexed branch first: it gives both names their (dict, dict) type
        stuff_images, stuff_anns = _index(_read_json(stuff_json), stuff_json)
        images = [image_dir / stuff_images[stem]["file_name"] for stem in sorted(stuff_images)]
    else:
        stuff_images, stuff_anns = {}, {}
        images = image_files(image_dir)
    tag = f"coco-stuff/1:crowd={crowd}:background={background}"
    tasks = []
    for img in images:
        stem = img.stem
        label = str(map_dir / f"{stem}.png") if map_dir is not None else None
        meta, anns, stuff = None, None, None
        if inst_json.is_file():
            meta = inst_images.get(stem)
            if meta is None:
                tasks.append(_bad_task(stem, split, img, source, f"{img}: not listed in {inst_json}"))
                continue
            anns = inst_anns.get(meta["id"], [])
        if map_dir is None:
            smeta = stuff_images[stem]
            stuff = stuff_anns.get(smeta["id"], [])
            meta = meta or smeta
        h, w = (int(meta["height"]), int(meta["width"])) if meta is not None else (None, None)
        files = tuple(str(p) for p in (img, label) if p is not None)
        load = partial(load_coco_sample, str(img), label, h, w, anns, stuff, crowd, background)
        tasks.append(SampleTask(stem, split, img.relative_to(source).as_posix(), files, load, tag, [anns, stuff, h, w]))
    return tasks, inst_json.is_file()


def _fail(message: str) -> Loaded:
    raise IngestError(message)


def _bad_task(stem: str, split: str, img: Path, source: Path, message: str) -> SampleTask:
    return SampleTask(stem, split, img.relative_to(source).as_posix(), (str(img),), partial(_fail, message))
