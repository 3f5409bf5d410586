"""Dataset formats: parsers of raw datasets and the writer of the prepared format (the ingest stage's work).

Prepared format (the contract with every later stage)::

    <out>/manifest.parquet   one row per sample: id, split ('train'|'val'), image, label, instance, edge
                             (the tar member names; instance/edge null without instances), width,
                             height, source (path relative to the source root, or generated:<seed>:<i>),
                             source_hash (sha256 of the sample's source bytes + parser settings), dataset,
                             label_classes / label_pixels (the label values present and their pixel
                             counts: a data drop's statistics without decoding the kept samples),
                             shard (shards/<split>-<NNNNNN>.tar), offset and length (the sample's bytes
                             in the shard), sha256 (of those bytes), <map>_offset / <map>_size (each
                             member's data in the shard, -1 where absent)
    <out>/classes.json       format_version, dataset, label_nc, dontcare (255), contain_dontcare_label,
                             has_instances, classes: [{index, name, color}] (+ ignore, notes); a
                             label value 255 only where contain_dontcare_label is true
    <out>/stats.json         num_samples per split, class_pixel_frequency per split, dontcare_fraction,
                             processed_this_run, reused, skipped [{file, error}], source, format,
                             shards {written, kept, compacted, removed}
    <out>/shards/<split>-<NNNNNN>.tar   POSIX tar, WebDataset names (shards.py), per sample:
        <id>.jpg|png         RGB JPEG/PNG bytes kept as they came (see common.py)
        <id>.label.png       uint8 class indices, 255 = dontcare
        <id>.instance.png    uint16 instance ids, 0 = none
        <id>.edge.png        uint8, 255 where a 4-neighbour has another instance id

``gaugan-pipeline prepared export`` writes the same maps as one file per map
(``images|labels|instances|edges/<split>/<id>.*``, the manifest's map columns then being paths);
``gaugan.data.PreparedDataset`` reads both layouts.

Formats and their source layouts: ``demo`` (demo.py), ``folder`` and ``spade`` (folder.py),
``coco-stuff`` (coco_stuff.py), ``ade20k`` (ade20k.py), ``ade20k-full`` (ade20k_full.py),
``cityscapes`` (cityscapes.py). The class table comes from the format's source or from
``data.classes`` (a built-in table or a file, class_tables.py).
Writing (parallel, incremental, atomic): writer.py. The stage itself: ``pipeline/stages/ingest.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from pipeline.datasets.writer import write_prepared
from pipeline.errors import IngestError
from pipeline.params import DatasetFormat, DataSettings

if TYPE_CHECKING:
    from gaugan.classes import ClassTable
    from pipeline.datasets.writer import SampleTask

FORMATS: tuple[str, ...] = get_args(DatasetFormat)  # data.format's values, as params.yaml is validated
# Formats whose label values have a fixed meaning: a class table given for them must have this many classes.
CLASS_COUNTS = {"coco-stuff": 182, "ade20k": 151, "ade20k-full": 151, "cityscapes": 35}

Builder = Callable[[Path, Any, "ClassTable | None"], tuple[list["SampleTask"], "ClassTable"]]


def _builder(format: str) -> Builder:
    build: Builder
    if format == "folder":
        from pipeline.datasets.folder import folder_tasks as build
    elif format == "spade":
        from pipeline.datasets.folder import spade_tasks as build
    elif format == "coco-stuff":
        from pipeline.datasets.coco_stuff import coco_stuff_tasks as build
    elif format == "ade20k":
        from pipeline.datasets.ade20k import ade20k_tasks as build
    elif format == "ade20k-full":
        from pipeline.datasets.ade20k_full import ade20k_full_tasks as build
    elif format == "cityscapes":
        from pipeline.datasets.cityscapes import cityscapes_tasks as build
    else:
        raise IngestError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    return build


def prepare(settings: DataSettings, source: Path, out: Path, progress: bool = True, root: Path = Path(".")) -> dict:
    """Prepare ``source`` (a dataset of ``settings.format``) into ``out``; returns the stats (stats.json).

    Raises :class:`IngestError` naming the file and the problem on bad input (with
    ``on_error: fail``; with ``skip`` bad samples are listed in stats["skipped"]), or when the
    source has no usable sample. ``out`` is replaced atomically, never left half-written.
    ``root``: the folder a relative ``data.classes`` path is relative to.
    """
    source, out = Path(source), Path(out)
    given = _given_classes(settings, root)
    if settings.format == "demo":
        from pipeline.datasets.common import with_instances
        from pipeline.datasets.demo import demo_tasks

        tasks, classes = demo_tasks(settings.demo)
        classes = classes if given is None else with_instances(given, True)
        source_name = f"generated:seed={settings.demo.seed}"
    else:
        build = _builder(settings.format)
        if not source.is_dir():
            raise IngestError(f"{source}: source folder not found (data.source / --source)")
        tasks, classes = build(source, settings, given)
        source_name = str(source)
    if not tasks:
        raise IngestError(
            f"{source}: no samples found for format {settings.format!r}; check the source layout "
            f"(documented in pipeline/datasets/{settings.format.replace('-', '_')}.py)"
        )
    with _executor(settings.dask_address) as executor:
        return write_prepared(
            tasks,
            classes,
            out,
            shard_size_mb=settings.shard_size_mb,
            compact_dead_fraction=settings.compact_dead_fraction,
            workers=settings.workers,
            on_error=settings.on_error,
            progress=progress,
            fmt=settings.format,
            source=source_name,
            executor=executor,
        )


@contextmanager
def _executor(address: str | None) -> Iterator[Executor | None]:
    """None (the local process pool), or the executor of a Dask cluster's client: its workers load,
    check and encode samples (they need this package and the source, and the previous output, at
    the same paths); the shards are still written here, in order, so the bytes are the same."""
    if address is None:
        yield None
        return
    try:
        from distributed import Client
    except ImportError:
        raise IngestError(
            f'data.dask_address is {address!r} but Dask is not installed; pip install ".[dask]" or set it to null'
        ) from None
    try:
        client = Client(address, set_as_default=False, timeout=30)
    except OSError as err:
        raise IngestError(f"data.dask_address {address!r}: no Dask scheduler answers ({err})") from None
    with client:
        yield client.get_executor(pure=False)


def _given_classes(settings: DataSettings, root: Path) -> ClassTable | None:
    """The table of ``data.classes``, checked against the format's fixed class count; None: the format's own."""
    from pipeline.datasets.class_tables import resolve_classes

    given = resolve_classes(settings.classes, root)
    expected = CLASS_COUNTS.get(settings.format)
    if settings.format == "demo":
        from pipeline.datasets.demo import NAMES

        expected = len(NAMES)
    if given is not None and expected is not None and given.label_nc != expected:
        raise IngestError(
            f"data.classes {settings.classes!r} has {given.label_nc} classes but the {settings.format!r} format's "
            f"label values mean {expected} classes; use a table of {expected} classes, or null for the format's own"
        )
    return given
