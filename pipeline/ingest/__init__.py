"""The ingest stage: raw datasets in, the prepared dataset out.

Prepared format (the contract with every later stage)::

    <out>/manifest.parquet   one row per sample: id, split, image, label, instance, edge (relative
                             paths), width, height, source, source_hash
    <out>/classes.json       dataset, label_nc, dontcare (255), contain_dontcare_label,
                             has_instances, classes: [{index, name, color}]
    <out>/stats.json         sample counts, per-split class pixel frequencies, skipped samples
    <out>/images/<split>/<id>.jpg|png      JPEG bytes are kept as they came
    <out>/labels/<split>/<id>.png          class indices, 255 = dontcare
    <out>/instances/<split>/<id>.png       uint16 instance ids, 0 = none
    <out>/edges/<split>/<id>.png           255 where a 4-neighbour has another instance id

Formats: ``demo`` (generated), ``folder``, ``spade``, ``ade20k``, ``ade20k-full``.
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

from pipeline.ingest.writer import IngestError, SampleTask, write_prepared

__all__ = ["IngestError", "run_ingest", "FORMATS"]

FORMATS = ("demo", "folder", "spade", "ade20k", "ade20k-full", "coco-stuff")


def _demo_tasks(settings) -> tuple[list[SampleTask], dict]:
    from pipeline.ingest.demo import class_table, generate_sample

    demo = settings.demo
    tasks = []
    for split, count, offset in (("train", demo.num_train, 0), ("val", demo.num_val, 1_000_000)):
        for i in range(count):
            tag = hashlib.sha256(f"demo/1:{demo.seed}:{offset + i}:{demo.width}x{demo.height}".encode()).hexdigest()
            tasks.append(SampleTask(f"demo_{split}_{i:06d}", split, f"generated:{demo.seed}:{offset + i}", tag,
                                    partial(generate_sample, demo.seed, offset + i, demo.width, demo.height)))
    return tasks, class_table()


def run_ingest(format: str, source: Path, out: Path, workers: int = 1, on_error: str = "fail",
               settings=None, progress: bool = True) -> dict:
    """Prepare ``source`` (of ``format``) into ``out``; returns the stats written to stats.json."""
    from pipeline.params import DataSettings

    settings = settings or DataSettings()
    source, out = Path(source), Path(out)
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    if format == "demo":
        tasks, classes = _demo_tasks(settings)
    else:
        if not source.is_dir():
            raise IngestError(f"{source}: source folder not found (data.source / --source)")
        if format == "folder":
            from pipeline.ingest.folder import folder_tasks as build
        elif format == "spade":
            from pipeline.ingest.folder import spade_tasks as build
        elif format == "ade20k":
            from pipeline.ingest.folder import ade20k_tasks as build
        elif format == "ade20k-full":
            from pipeline.ingest.ade20k_full import ade20k_full_tasks

            build = partial(ade20k_full_tasks, short_side=settings.ade20k_short_side)
        else:
            raise IngestError(f"format {format!r} is not supported yet; choose one of "
                              "demo, folder, spade, ade20k, ade20k-full")
        tasks, classes = build(source)
    if not tasks:
        raise IngestError(f"{source}: no samples found for format {format!r}; check the layout (see pipeline/ingest)")
    return write_prepared(tasks, classes, out, workers=workers, on_error=on_error, progress=progress,
                          fmt=format, source=str(source))
