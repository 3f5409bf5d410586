"""The ingest stage: a raw dataset in, the prepared dataset out.

Prepared format (the contract with every later stage)::

    <out>/manifest.parquet   one row per sample: id, split ('train'|'val'), image, label, instance, edge
                             (paths relative to <out>; instance/edge null without instances), width,
                             height, source (path relative to the source root, or generated:<seed>:<i>),
                             source_hash (sha256 of the sample's source bytes + parser settings), dataset
    <out>/classes.json       format_version, dataset, label_nc, dontcare (255), contain_dontcare_label,
                             has_instances, classes: [{index, name, color}] (+ ignore, notes for ADE20K)
    <out>/stats.json         num_samples per split, class_pixel_frequency per split, dontcare_fraction,
                             processed_this_run, reused, skipped [{file, error}], source, format
    <out>/images/<split>/<id>.jpg|png      RGB JPEG/PNG bytes kept as they came (see common.py)
    <out>/labels/<split>/<id>.png          uint8 class indices, 255 = dontcare
    <out>/instances/<split>/<id>.png       uint16 instance ids, 0 = none
    <out>/edges/<split>/<id>.png           uint8, 255 where a 4-neighbour has another instance id

Formats and their source layouts: ``demo`` (demo.py), ``folder`` and ``spade`` (folder.py),
``coco-stuff`` (coco_stuff.py), ``ade20k`` (ade20k.py), ``ade20k-full`` (ade20k_full.py).
Writing (parallel, incremental, atomic): writer.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pipeline.ingest.common import IngestError
from pipeline.ingest.writer import write_prepared

if TYPE_CHECKING:
    from pipeline.params import DataSettings

__all__ = ["IngestError", "run_ingest", "FORMATS"]

FORMATS = ("demo", "folder", "spade", "coco-stuff", "ade20k", "ade20k-full")


def _builder(format: str):
    if format == "folder":
        from pipeline.ingest.folder import folder_tasks as build
    elif format == "spade":
        from pipeline.ingest.folder import spade_tasks as build
    elif format == "coco-stuff":
        from pipeline.ingest.coco_stuff import coco_stuff_tasks as build
    elif format == "ade20k":
        from pipeline.ingest.ade20k import ade20k_tasks as build
    elif format == "ade20k-full":
        from pipeline.ingest.ade20k_full import ade20k_full_tasks as build
    else:
        raise IngestError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    return build


def run_ingest(
    format: str,
    source: Path,
    out: Path,
    workers: int = 1,
    on_error: Literal["fail", "skip"] = "fail",
    settings: DataSettings | None = None,
    progress: bool = True,
) -> dict:
    """Prepare ``source`` (a dataset of ``format``) into ``out``; returns the stats (as in stats.json).

    Raises :class:`IngestError` naming the file and the problem on bad input (with
    ``on_error='fail'``; with ``'skip'`` bad samples are listed in stats["skipped"]), or when
    the source has no usable sample. ``out`` is replaced atomically, never left half-written.
    """
    from pipeline.params import DataSettings

    settings = settings or DataSettings()
    source, out = Path(source), Path(out)
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if format == "demo":
        from pipeline.ingest.demo import demo_tasks

        tasks, classes = demo_tasks(settings.demo)
        source_name = f"generated:seed={settings.demo.seed}"
    else:
        build = _builder(format)
        if not source.is_dir():
            raise IngestError(f"{source}: source folder not found (data.source / --source)")
        tasks, classes = build(source, settings)
        source_name = str(source)
    if not tasks:
        raise IngestError(
            f"{source}: no samples found for format {format!r}; check the source layout "
            f"(documented in pipeline/ingest/{format.replace('-', '_')}.py)"
        )
    return write_prepared(
        tasks, classes, out, workers=workers, on_error=on_error, progress=progress, fmt=format, source=source_name
    )
