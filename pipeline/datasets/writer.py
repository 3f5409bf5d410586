"""Writes the prepared dataset: parallel, incremental, append-only, atomic.

Each source sample is a :class:`SampleTask`. A worker hashes the sample's source files (plus the
parser settings and per-sample metadata, ``task.tag`` and ``task.meta``). When the hash equals the
one in the existing manifest, the sample is *reused*: its blob is read back from its shard and checked
against the manifest's sha256 by the reader every stage uses (``gaugan.shards``; a truncated, corrupt
or missing shard stops ingest naming the shard and the sample), and its label's class pixel counts
come from the manifest (``label_classes``, ``label_pixels``), so nothing is decoded. Otherwise the
sample is loaded, validated and encoded into a blob (shards.py), and the parent appends it to a
*new* shard of its split.

Old shards whose samples are all kept are hard-linked into the new tree (copied where links are
impossible), so they stay byte-identical and DVC pushes only the new ones. Samples removed or
replaced leave dead bytes in their old shard; a shard whose dead fraction passes
``data.compact_dead_fraction`` is rewritten under its own name with its live blobs (only that
shard), and a shard with no live sample is dropped. The new dataset is built in a temporary
sibling folder and renamed onto ``out`` at the end (``pipeline.io.atomic_path``): an interrupted or
failed run leaves the previous output as it was. Samples are handled in (split, id) order and the
parent alone writes shards, so the output bytes are the same whatever the number of workers and
whichever executor runs them (a process pool, or a Dask cluster's executor: ``executor=``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Generator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gaugan.classes import CLASSES_FILE, DONTCARE, ClassTable
from gaugan.edges import instance_edges
from gaugan.layout import KINDS, MANIFEST_FILE, SHARD_COLUMNS, SHARD_DIR, SPLITS, STATS_FILE, isnull
from pipeline.datasets.common import ImageData, encode_png
from pipeline.datasets.shards import (
    END,
    ShardWriter,
    member,
    member_name,
    placed,
    read_blob,
    sample_blob,
    shard_index,
)
from pipeline.errors import IngestError
from pipeline.io import atomic_path, atomic_write_json

# the label values present in a sample (255 = dontcare included) and their pixel counts: what an
# incremental ingest needs of a kept sample for stats.json, without decoding its label map
COUNT_COLUMNS = ("label_classes", "label_pixels")
MANIFEST_COLUMNS = (
    "id",
    "split",
    "image",
    "label",
    "instance",
    "edge",
    "width",
    "height",
    "source",
    "source_hash",
    "dataset",
    *COUNT_COLUMNS,
    *SHARD_COLUMNS,
)
HASH_VERSION = "prepared/1"  # bump when the way outputs are written changes, so old outputs are redone


@dataclass(frozen=True)
class Loaded:
    """A sample as a parser produces it, before validation."""

    image: ImageData
    label: np.ndarray  # [H,W] integer class indices, 255 = dontcare
    label_png: bytes | None = None  # the source label PNG, when it can be stored unchanged (8-bit greyscale)
    instance: np.ndarray | None = None  # [H,W] integer ids, 0 = none


@dataclass(frozen=True)
class SampleTask:
    """One sample to prepare. ``load`` must be picklable (a module-level function or a partial)."""

    id: str
    split: str
    source: str  # recorded in the manifest: path relative to the source root, or generated:<seed>:<i>
    files: tuple[str, ...]  # the sample's source files: hashed, and named in error messages
    load: Callable[[], Loaded]
    tag: str = ""  # parser settings that affect the output
    meta: object = None  # per-sample metadata that affects it (e.g. its JSON annotations); JSON-able


def sample_hash(task: SampleTask) -> str:
    """sha256 over the parser settings, the sample's metadata and its source files' bytes
    (computed in the worker, so serialising metadata and reading files run in parallel)."""
    h = hashlib.sha256(f"{HASH_VERSION}\0{task.tag}\0".encode())
    if task.meta is not None:
        h.update(json.dumps(task.meta, sort_keys=True, separators=(",", ":")).encode())
        h.update(b"\0")
    for f in task.files:
        try:
            data = Path(f).read_bytes()
        except OSError:
            h.update(b"<missing>\0")  # the loader reports the real problem
            continue
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class _Job:
    task: SampleTask
    prev: dict | None
    old_root: str
    label_nc: int
    dataset: str
    dontcare: bool  # 255 allowed (the class table has a dontcare channel)


def _count_fields(counts: np.ndarray) -> dict:
    """The manifest's ``label_classes`` / ``label_pixels`` of a label's 256-bin histogram."""
    present = np.flatnonzero(counts)
    return {"label_classes": present.tolist(), "label_pixels": counts[present].astype(np.int64).tolist()}


def _stored_counts(prev: dict, blob: bytes) -> np.ndarray:
    """A kept sample's histogram: from its manifest row, or (a manifest written before those columns)
    from its label map."""
    classes, pixels = prev.get("label_classes"), prev.get("label_pixels")
    if classes is not None and pixels is not None and not isinstance(classes, float):
        counts = np.zeros(256, np.int64)
        counts[np.asarray(classes, np.int64)] = np.asarray(pixels, np.int64)
        return counts
    with Image.open(io.BytesIO(member(blob, prev, "label") or b"")) as im:
        return np.bincount(np.array(im).ravel(), minlength=256)[:256].astype(np.int64)


def _reuse(job: _Job, digest: str) -> tuple[dict, np.ndarray] | None:
    prev = job.prev
    if prev is None or prev.get("source_hash") != digest:
        return None
    blob = read_blob(Path(job.old_root), prev)  # a bad shard is an IngestError that stops the run
    counts = _stored_counts(prev, blob)
    row: dict[str, Any] = {
        k: (None if isnull(prev.get(k)) and k in ("instance", "edge") else prev.get(k))
        for k in MANIFEST_COLUMNS
        if k not in COUNT_COLUMNS
    }
    for k in ("width", "height", "offset", "length", *(f"{k}_{f}" for k in KINDS for f in ("offset", "size"))):
        row[k] = int(row[k])
    row["source"], row["dataset"] = job.task.source, job.dataset  # the same bytes may have moved
    return row | _count_fields(counts), counts


def _process(job: _Job, digest: str) -> tuple[dict, np.ndarray, bytes]:
    task = job.task
    where = ", ".join(task.files) or task.source
    try:
        sample = task.load()
    except IngestError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoding problem is bad input for this sample
        raise IngestError(f"{where}: cannot read ({type(err).__name__}: {err})") from None
    image, label, instance = sample.image, sample.label, sample.instance
    w, h = image.width, image.height
    if label.shape != (h, w):
        raise IngestError(f"{where}: label map is {label.shape[1]}x{label.shape[0]} but the image is {w}x{h}")
    if not np.issubdtype(label.dtype, np.integer):
        raise IngestError(f"{where}: label map has non-integer values ({label.dtype})")
    lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise IngestError(
            f"{where}: label value {lo if lo < 0 else hi} is outside the class table "
            f"(0..{job.label_nc - 1}, {DONTCARE} = dontcare)"
        )
    counts = np.bincount(label.ravel(), minlength=256)
    present = np.flatnonzero(counts)
    bad = present[(present >= job.label_nc) & ((present != DONTCARE) | (not job.dontcare))]
    if bad.size:
        allowed = f"{DONTCARE} = dontcare" if job.dontcare else "no dontcare value in this class table"
        raise IngestError(
            f"{where}: label value {int(bad[0])} is outside the class table (0..{job.label_nc - 1}, {allowed})"
        )
    if instance is not None:
        if instance.shape != (h, w):
            raise IngestError(
                f"{where}: instance map is {instance.shape[1]}x{instance.shape[0]} but the image is {w}x{h}"
            )
        if instance.size and (int(instance.min()) < 0 or int(instance.max()) > 65535):
            raise IngestError(
                f"{where}: instance ids must be 0..65535, got {int(instance.min())}..{int(instance.max())}"
            )
    label8 = label.astype(np.uint8)
    members = {"image": image.data, "label": sample.label_png if sample.label_png is not None else encode_png(label8)}
    if instance is not None:
        members["instance"] = encode_png(instance.astype(np.uint16))
        members["edge"] = encode_png(instance_edges(instance))
    named = {k: (member_name(task.id, k, image.ext), v) for k, v in members.items()}
    blob, info = sample_blob(named)
    row = {
        "id": task.id,
        "split": task.split,
        **{k: named[k][0] if k in named else None for k in KINDS},
        "width": w,
        "height": h,
        "source": task.source,
        "source_hash": digest,
        "dataset": job.dataset,
        **info,
        **_count_fields(counts[:256]),
    }
    return row, counts[:256].astype(np.int64), blob


def _work(job: _Job):
    """-> (status, row, counts, error, blob): status 'reused' | 'processed' | 'error'."""
    digest = sample_hash(job.task)
    reused = _reuse(job, digest)
    if reused is not None:
        return "reused", reused[0], reused[1], None, None
    try:
        row, counts, blob = _process(job, digest)
    except IngestError as err:
        return "error", None, None, {"file": ", ".join(job.task.files) or job.task.source, "error": str(err)}, None
    return "processed", row, counts, None, blob


def _results(
    jobs: list[_Job], workers: int, progress: bool, executor: Executor | None = None
) -> Generator[Any, None, None]:
    from pipeline.logs import Progress

    bar = Progress(len(jobs), "ingest", every=max(1, len(jobs) // 10), unit="img", enabled=progress)
    try:
        if executor is not None:  # e.g. a Dask client's executor: results still come back in job order
            for result in executor.map(_work, jobs):
                yield result
                bar.update()
            return
        if workers <= 1 or len(jobs) < 2:
            for job in jobs:
                yield _work(job)
                bar.update()
            return
        _prewarm()
        pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=_worker_init)
        try:
            # small chunks: workers finish together (a big last chunk leaves the others idle)
            chunk = max(1, min(4, len(jobs) // (workers * 16)))
            for result in pool.map(_work, jobs, chunksize=chunk):
                yield result
                bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def _worker_init() -> None:
    """One thread per worker process: the processes are the parallelism."""
    import cv2

    cv2.setNumThreads(1)


def _prewarm() -> None:
    """Import what the workers use before they fork, so each does not pay for it again."""
    import cv2  # noqa: F401
    from PIL import Image as _Image

    _Image.preinit()
    with contextlib.suppress(ImportError):  # only the COCO parser needs it
        from pycocotools import mask  # noqa: F401


def _old_state(out: Path, classes: ClassTable) -> dict:
    """Rows of the existing output that may be reused: the same dataset kind and dontcare value, and a
    class table that the new one equals or extends (classes appended: every old label stays valid)."""
    manifest, table = out / MANIFEST_FILE, out / CLASSES_FILE
    if not (manifest.is_file() and table.is_file()):
        return {}
    try:
        import pandas as pd

        old_classes = json.loads(table.read_text())
        same = (classes.dataset, classes.contain_dontcare_label)
        if (old_classes.get("dataset"), old_classes.get("contain_dontcare_label")) != same:
            return {}
        old_names = [c.get("name") for c in old_classes.get("classes", [])]
        if not old_names or old_names != list(classes.names[: len(old_names)]):
            return {}
        frame = pd.read_parquet(manifest)
        if not set(MANIFEST_COLUMNS) - set(COUNT_COLUMNS) <= set(frame.columns) or frame["shard"].isna().any():
            return {}  # another layout (e.g. an exported file tree): everything is prepared again
        return {(r["split"], r["id"]): r for r in frame.astype(object).to_dict("records")}
    except Exception:  # noqa: BLE001 - an unreadable previous output is simply rebuilt
        return {}


def recover(out: Path) -> None:
    """Undo what a killed run may have left: a stale temporary tree, or (killed between the two
    renames of the swap) the previous output parked under its ``.old`` name."""
    out = Path(out)
    for p in out.parent.glob(f".{out.name}.tmp-*") if out.parent.is_dir() else ():
        if p.is_dir() and not _alive(p.name.rsplit("-", 1)[-1]):
            shutil.rmtree(p, ignore_errors=True)
    if not out.exists():
        parked = sorted(out.parent.glob(f".{out.name}.old-*")) if out.parent.is_dir() else []
        if parked and (parked[-1] / MANIFEST_FILE).is_file():
            os.replace(parked[-1], out)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def write_prepared(
    tasks: list[SampleTask],
    classes: ClassTable,
    out: Path,
    *,
    shard_size_mb: float,
    compact_dead_fraction: float,
    workers: int = 1,
    on_error: str = "fail",
    progress: bool = True,
    fmt: str = "",
    source: str = "",
    executor: Executor | None = None,
) -> dict:
    """Prepare ``tasks`` into ``out`` (see the module docstring); returns the stats."""
    out = Path(out)
    _check_tasks(tasks)
    recover(out)
    old_rows = _old_state(out, classes)
    label_nc, dataset = classes.label_nc, classes.dataset
    rows, skipped, counts = [], [], {s: np.zeros(256, np.int64) for s in SPLITS}
    done = {"processed": 0, "reused": 0}
    with atomic_path(out) as tmp:
        (tmp / SHARD_DIR).mkdir(parents=True)
        dontcare = classes.contain_dontcare_label
        jobs = [_Job(t, old_rows.get((t.split, t.id)), str(out), label_nc, dataset, dontcare) for t in tasks]
        jobs.sort(key=lambda j: (j.task.split, j.task.id))  # shards fill in manifest order
        first = {
            s: 1 + max((shard_index(r["shard"]) for r in old_rows.values() if r["split"] == s), default=-1)
            for s in SPLITS
        }
        writers = {s: ShardWriter(tmp, s, first[s], int(shard_size_mb * 2**20)) for s in SPLITS}
        # closing(): on failure the pool is shut down before atomic_path removes the tree it writes into
        with closing(_results(jobs, workers, progress, executor)) as results:
            for status, row, c, err, blob in results:
                if status == "error":
                    if on_error == "fail":
                        raise IngestError(err["error"])
                    skipped.append(err)
                    continue
                done[status] += 1
                if status == "processed":
                    row = placed(row, *writers[row["split"]].add(blob))
                rows.append(row)
                counts[row["split"]] += c
        for writer in writers.values():
            writer.close()
        if not rows:
            raise IngestError(f"{source}: no usable samples ({len(skipped)} skipped)")
        shards = _carry_shards(out, tmp, rows, old_rows, compact_dead_fraction)
        shards["written"] = sorted(n for w in writers.values() for n in w.written)
        stats = _stats(rows, counts, label_nc, skipped, fmt, dataset, source, done["processed"], done["reused"])
        _write_manifest(tmp, rows)
        atomic_write_json(tmp / CLASSES_FILE, classes.to_dict())
        atomic_write_json(tmp / STATS_FILE, {**stats, "shards": shards})
    return {**stats, "shards": shards}


def _check_tasks(tasks: list[SampleTask]) -> None:
    seen = set()
    for t in tasks:
        if t.split not in SPLITS:
            raise IngestError(f"{t.source}: split must be one of {SPLITS}, got {t.split!r}")
        if (t.split, t.id) in seen:
            raise IngestError(
                f"{t.source}: two source samples share the id {t.id!r} in the {t.split} split "
                "(e.g. the same name with two extensions)"
            )
        seen.add((t.split, t.id))


def _write_manifest(tmp: Path, rows: list[dict]) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).sort_values(["split", "id"], kind="stable")
    ints = ["width", "height", "offset", "length", *(f"{k}_{f}" for k in KINDS for f in ("offset", "size"))]
    frame = frame.astype(dict.fromkeys(ints, "int64")).reset_index(drop=True)
    frame.to_parquet(tmp / MANIFEST_FILE, index=False)


def _carry_shards(out: Path, tmp: Path, rows: list[dict], old_rows: dict, dead_limit: float) -> dict:
    """Old shards into the new tree: linked unchanged, compacted (rewritten with their live blobs,
    ``rows`` updated) when their dead fraction passes ``dead_limit``, or dropped when nothing in
    them lives. Returns the shard names of each case."""
    old = sorted({str(r["shard"]) for r in old_rows.values()})
    live: dict[str, list[dict]] = {name: [] for name in old}
    for row in rows:
        if row["shard"] in live:  # a reused sample (new ones are in new shards)
            live[row["shard"]].append(row)
    report: dict[str, list[str]] = {"kept": [], "compacted": [], "removed": []}
    for name in old:
        payload = (out / name).stat().st_size - len(END)
        dead = 1.0 - sum(int(r["length"]) for r in live[name]) / max(1, payload)
        if not live[name]:
            report["removed"].append(name)
        elif dead > dead_limit:
            _compact(out, tmp, name, live[name])
            report["compacted"].append(name)
        else:
            try:
                os.link(out / name, tmp / name)
            except OSError:
                shutil.copy2(out / name, tmp / name)
            report["kept"].append(name)
    return report


def _compact(out: Path, tmp: Path, name: str, live: list[dict]) -> None:
    """Rewrite shard ``name`` with only its ``live`` samples' blobs (in id order); updates their rows."""
    with open(tmp / name, "xb") as fh:
        pos = 0
        for row in sorted(live, key=lambda r: r["id"]):
            blob = read_blob(out, row)
            fh.write(blob)
            row.update(placed(row, name, pos))
            pos += len(blob)
        fh.write(END)


def _stats(rows, counts, label_nc, skipped, fmt, dataset, source, processed, reused) -> dict:
    freq = {}
    for split, c in counts.items():
        total = int(c.sum())
        if total:
            freq[split] = {str(i): round(float(c[i]) / total, 6) for i in range(label_nc) if c[i]}
    total_all = sum(int(c.sum()) for c in counts.values())
    return {
        "format": fmt,
        "dataset": dataset,
        "source": source,
        "num_samples": {s: sum(1 for r in rows if r["split"] == s) for s in SPLITS},
        "class_pixel_frequency_scope": "per split: class index -> fraction of all pixels of that split",
        "class_pixel_frequency": freq,
        "dontcare_fraction": round(sum(int(c[DONTCARE]) for c in counts.values()) / max(1, total_all), 6),
        "processed_this_run": processed,
        "reused": reused,
        "skipped": skipped,
    }
