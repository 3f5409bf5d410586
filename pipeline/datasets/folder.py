"""Plain folder datasets (``folder``) and the reference implementation's dataroots (``spade``).

``folder`` layout, for custom datasets::

    <source>/classes.json | classes.txt       the class list (see common.read_class_file)
    <source>/images/{train,val}/<name>.jpg|jpeg|png
    <source>/labels/{train,val}/<name>.png    class indices (8-bit), 255 = dontcare
    <source>/instances/{train,val}/<name>.png optional; ids as they are (0 = none, 8 or 16-bit).
                                              When instances/ exists, every image needs one.

``spade`` layout (a dataroot as NVlabs/SPADE reads it, brought as it is)::

    <source>/{train,val}_img/<name>.jpg|png
    <source>/{train,val}_label/<name>.png
    <source>/{train,val}_inst/<name>.png      optional
    <source>/train_{img,label,inst}_portrait/   optional, COCO-Stuff's portrait-oriented images: trained
                                              on as the reference does (data.coco_portraits; false is
                                              its --coco_no_portraits); never part of val
    <source>/classes.json | classes.txt | labels.txt   (labels.txt: the COCO-Stuff list, 182 classes)

The reference's instance maps are uint8 label maps with a running object counter painted over
(coco_generate_instance_map.py), so a value is a label or an object number. Here each distinct
value becomes one id, 1..k in value order: every boundary of the source map (all the model ever
uses of it) is kept, and ids no longer collide with label values or overflow at 256.

Samples are driven by the images: an image without its label is bad input, and so is a label or
instance map without an image (the reference's loader stops on the mismatch): with
``data.on_error: skip`` it is listed in the stats' ``skipped`` and left out. Sample ids are the
file stems.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from gaugan.classes import ClassTable
from pipeline.datasets.common import (
    class_table,
    compact_ids,
    image_files,
    load_image,
    read_class_file,
    read_index_map,
    with_instances,
)
from pipeline.datasets.writer import Loaded, SampleTask
from pipeline.errors import IngestError


def load_pair(image: str, label: str, instance: str | None = None, instance_mode: str = "ids") -> Loaded:
    """Image + label PNG (+ instance PNG). ``instance_mode``: 'ids' as they are, 'spade' compacted."""
    if not Path(label).is_file():
        raise IngestError(f"{image}: image without label (expected {label})")
    img = load_image(image)
    lab, lab_png = read_index_map(label, "label map")
    inst = None
    if instance is not None:
        if not Path(instance).is_file():
            raise IngestError(f"{image}: instance map missing (expected {instance})")
        raw, _ = read_index_map(instance, "instance map")
        inst = compact_ids(raw) if instance_mode == "spade" else raw
    return Loaded(img, lab, lab_png, inst)


def pair_tasks(
    image_dir: Path, label_dir: Path, inst_dir: Path | None, split: str, source_root: Path, instance_mode: str, tag: str
) -> list[SampleTask]:
    """One task per image of ``image_dir``; label and instance found by stem."""
    if not image_dir.is_dir():
        return []
    tasks = []
    for img in image_files(image_dir):
        label = label_dir / f"{img.stem}.png"
        inst = inst_dir / f"{img.stem}.png" if inst_dir is not None else None
        files = tuple(str(p) for p in (img, label, inst) if p is not None)
        tasks.append(
            SampleTask(
                img.stem,
                split,
                img.relative_to(source_root).as_posix(),
                files,
                partial(load_pair, str(img), str(label), str(inst) if inst else None, instance_mode),
                tag,
            )
        )
    return tasks + _orphan_tasks(image_dir, [label_dir, inst_dir], {t.id for t in tasks}, split, source_root, tag)


def _orphan_tasks(
    image_dir: Path, map_dirs: list[Path | None], stems: set[str], split: str, source_root: Path, tag: str
) -> list[SampleTask]:
    """A task for each stem with label or instance maps but no image: loading it is the error that
    names them, so ``on_error`` fails on it or lists it like any other bad sample."""
    orphans: dict[str, list[Path]] = {}
    for folder in map_dirs:
        if folder is not None and folder.is_dir():
            for path in sorted(folder.glob("*.png")):
                if path.stem not in stems:
                    orphans.setdefault(path.stem, []).append(path)
    return [
        SampleTask(
            stem,
            split,
            paths[0].relative_to(source_root).as_posix(),
            tuple(str(p) for p in paths),
            partial(_no_image, [str(p) for p in paths], str(image_dir / stem)),
            tag,
        )
        for stem, paths in sorted(orphans.items())
    ]


def _no_image(paths: list[str], expected: str) -> Loaded:
    raise IngestError(
        f"{', '.join(paths)}: a map without an image (expected {expected}.jpg or .png); add the image or remove the map"
    )


def folder_tasks(source: Path, settings=None, classes: ClassTable | None = None) -> tuple[list[SampleTask], ClassTable]:
    """``classes``: the table to use (data.classes); None: the source's classes.json / classes.txt."""
    has_inst = (source / "instances").is_dir()  # then every sample needs its instance map
    tasks = []
    for split in ("train", "val"):
        tasks += pair_tasks(
            source / "images" / split,
            source / "labels" / split,
            source / "instances" / split if has_inst else None,
            split,
            source,
            "ids",
            "folder/1",
        )
    if classes is not None:
        return tasks, with_instances(classes, has_inst)
    entries, options = read_class_file(source)
    table = class_table(
        str(options.get("dataset", "folder")),
        entries,
        has_instances=has_inst,
        contain_dontcare_label=bool(options.get("contain_dontcare_label", True)),
    )
    return tasks, table


def spade_tasks(source: Path, settings=None, classes: ClassTable | None = None) -> tuple[list[SampleTask], ClassTable]:
    """``classes``: the table to use (data.classes, e.g. coco-stuff); None: the dataroot's class file."""
    has_inst = any((source / f"{s}_inst").is_dir() for s in ("train", "val"))
    folders = [("train", ""), ("val", "")] + ([("train", "_portrait")] if settings.coco_portraits else [])
    tasks = []
    for split, suffix in folders:
        tasks += pair_tasks(
            source / f"{split}_img{suffix}",
            source / f"{split}_label{suffix}",
            source / f"{split}_inst{suffix}" if has_inst else None,
            split,
            source,
            "spade",
            "spade/1",
        )
    _check_unique_ids(tasks)
    if classes is not None:
        return tasks, with_instances(classes, has_inst)
    return tasks, _spade_class_table(source, has_inst)


def _check_unique_ids(tasks: list[SampleTask]) -> None:
    """Sample ids are file stems: a portrait image named like a landscape one of its split would collide."""
    seen: dict[tuple[str, str], str] = {}
    for task in tasks:
        key = (task.split, task.id)
        if key in seen:
            raise IngestError(
                f"{task.source}: sample id {task.id!r} is also {seen[key]} in the {task.split} split; "
                "rename one of them, or set data.coco_portraits: false to leave the portrait folders out"
            )
        seen[key] = task.source


def _spade_class_table(source: Path, has_inst: bool) -> ClassTable:
    if (source / "classes.json").is_file() or (source / "classes.txt").is_file():
        entries, options = read_class_file(source)
        dataset = str(options.get("dataset", "spade"))
    elif (source / "labels.txt").is_file():
        from pipeline.datasets.coco_stuff import read_labels_txt

        entries, dataset = read_labels_txt(source / "labels.txt"), "coco-stuff"
    else:
        raise IngestError(
            f"{source}: missing class file; the spade layout carries no class names: add classes.json "
            "or classes.txt, or the COCO-Stuff labels.txt, or set data.classes (--classes) to coco-stuff, "
            "ade20k or cityscapes, as the reference's --dataset_mode does"
        )
    return class_table(dataset, entries, has_instances=has_inst)
