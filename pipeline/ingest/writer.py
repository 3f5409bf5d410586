"""Writes the prepared dataset: parallel, incremental, atomic.

Each source sample is a :class:`SampleTask` with a content hash. Samples whose hash matches the
existing manifest are carried over (hard links to the unchanged files, so their bytes are
identical); the others are processed in a process pool. The new dataset is built in a temporary
sibling folder and swapped in at the end, so an interrupted or failed run leaves the previous
output as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from gaugan.edges import instance_edges
from pipeline.io import atomic_write_json

DONTCARE = 255


class IngestError(RuntimeError):
    """Bad input: the message names the file and the problem."""


@dataclass(frozen=True)
class SampleTask:
    id: str
    split: str
    source: str  # what the manifest records as the sample's origin
    source_hash: str
    load: Callable[[], tuple]  # -> (image: np.uint8[H,W,3] | bytes-with-ext, label, instance|None)
    files: tuple[str, ...] = field(default=())  # source files, named in error messages


def hash_files(paths, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        if p is not None:
            h.update(Path(p).read_bytes())
    return h.hexdigest()


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _process(task: SampleTask, tmp_root: str, label_nc: int) -> dict:
    """Load, validate and write one sample; returns its manifest row (plus class counts)."""
    where = ", ".join(task.files) or task.source
    try:
        image, label, instance = task.load()
    except IngestError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoding problem is bad input for this sample
        raise IngestError(f"{where}: cannot read ({type(err).__name__}: {err})") from None
    if isinstance(image, tuple):  # (encoded bytes, extension, decoded array): keep the bytes as they are
        image_bytes, ext, decoded = image
    else:
        decoded, image_bytes, ext = image, None, ".png"
    h, w = decoded.shape[:2]
    if label.shape != (h, w):
        raise IngestError(f"{where}: label map is {label.shape[1]}x{label.shape[0]} but the image is {w}x{h}")
    values = np.unique(label)
    bad = values[(values >= label_nc) & (values != DONTCARE)]
    if bad.size:
        raise IngestError(f"{where}: label value {int(bad[0])} is outside the class table (0..{label_nc - 1}, 255 = dontcare)")
    if instance is not None and instance.shape != (h, w):
        raise IngestError(f"{where}: instance map is {instance.shape[1]}x{instance.shape[0]} but the image is {w}x{h}")

    root = Path(tmp_root)
    rel = {"image": f"images/{task.split}/{task.id}{ext}", "label": f"labels/{task.split}/{task.id}.png"}
    (root / rel["image"]).write_bytes(image_bytes if image_bytes is not None else _png_bytes(decoded))
    label_dtype = np.uint8 if label_nc < 255 else np.uint16
    (root / rel["label"]).write_bytes(_png_bytes(label.astype(label_dtype)))
    rel["instance"] = rel["edge"] = None
    if instance is not None:
        rel["instance"] = f"instances/{task.split}/{task.id}.png"
        rel["edge"] = f"edges/{task.split}/{task.id}.png"
        (root / rel["instance"]).write_bytes(_png_bytes(instance.astype(np.uint16)))
        (root / rel["edge"]).write_bytes(_png_bytes(instance_edges(instance)))
    counts = np.bincount(label.ravel().astype(np.int64), minlength=256)
    return {"id": task.id, "split": task.split, **rel, "width": w, "height": h, "source": task.source,
            "source_hash": task.source_hash, "_counts": counts[:max(256, label_nc)].tolist()}


def _run_one(args):
    task, tmp_root, label_nc = args
    try:
        return _process(task, tmp_root, label_nc), None
    except IngestError as err:
        return None, {"file": ", ".join(task.files) or task.source, "error": str(err)}


def write_prepared(tasks: list[SampleTask], classes: dict, out: Path, *, workers: int = 1,
                   on_error: str = "fail", progress: bool = True, fmt: str = "", source: str = "") -> dict:
    import pandas as pd

    out = Path(out)
    label_nc = int(classes["label_nc"])
    old_rows = {}
    if (out / "manifest.parquet").is_file():
        old = pd.read_parquet(out / "manifest.parquet")
        old_rows = {(r["split"], r["id"]): r for r in old.to_dict("records")}
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left over by an interrupted run
    for sub in ("images", "labels", "instances", "edges"):
        for split in ("train", "val"):
            (tmp / sub / split).mkdir(parents=True, exist_ok=True)

    rows, todo, skipped = [], [], []
    for task in tasks:
        prev = old_rows.get((task.split, task.id))
        if prev is not None and prev["source_hash"] == task.source_hash and _link_files(prev, out, tmp):
            rows.append(prev)
        else:
            todo.append(task)
    try:
        results = _map(todo, str(tmp), label_nc, workers, progress)
        for task, (row, err) in zip(todo, results):
            if err is not None:
                if on_error == "fail":
                    raise IngestError(err["error"])
                skipped.append(err)
            else:
                rows.append(row)
        if not rows:
            raise IngestError(f"{source}: no usable samples found")
        stats = _stats(rows, out, label_nc, skipped, fmt, source, processed=len(todo))
        manifest = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
        manifest = manifest.sort_values(["split", "id"]).reset_index(drop=True)
        manifest.to_parquet(tmp / "manifest.parquet", index=False)
        atomic_write_json(tmp / "classes.json", classes)
        atomic_write_json(tmp / "stats.json", stats)
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def _link_files(row: dict, old_root: Path, new_root: Path) -> bool:
    for key in ("image", "label", "instance", "edge"):
        rel = row.get(key)
        if rel is None or (isinstance(rel, float) and np.isnan(rel)):
            continue
        src = old_root / rel
        if not src.is_file():
            return False
        dst = new_root / rel
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return True


def _map(todo: list[SampleTask], tmp_root: str, label_nc: int, workers: int, progress: bool) -> list:
    from tqdm import tqdm

    args = [(t, tmp_root, label_nc) for t in todo]
    bar = dict(total=len(args), desc="ingest", unit="img", disable=not progress or not args)
    if workers <= 1 or len(args) < 2:
        return [r for r in tqdm(map(_run_one, args), **bar)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(_run_one, args, chunksize=max(1, len(args) // (workers * 8))), **bar))


def _stats(rows, out, label_nc, skipped, fmt, source, processed) -> dict:
    counts = {"train": np.zeros(max(256, label_nc), np.int64), "val": np.zeros(max(256, label_nc), np.int64)}
    old_stats = {}
    if (out / "stats.json").is_file():
        old_stats = json.loads((out / "stats.json").read_text()).get("_per_sample_counts", {})
    per_sample = {}
    for r in rows:
        key = f"{r['split']}/{r['id']}"
        c = r.get("_counts") or old_stats.get(key)
        if c is not None:
            per_sample[key] = c
            counts[r["split"]][: len(c)] += np.asarray(c, np.int64)
    freq = {}
    for split, c in counts.items():
        total = c.sum()
        if total:
            freq[split] = {str(i): round(float(c[i] / total), 6) for i in range(label_nc) if c[i]}
    total_all = sum(c.sum() for c in counts.values())
    return {
        "format": fmt,
        "source": source,
        "num_samples": {s: sum(1 for r in rows if r["split"] == s) for s in ("train", "val")},
        "processed_this_run": processed,
        "class_pixel_frequency": freq,  # per split: class index -> fraction of that split's pixels
        "dontcare_fraction": round(float(sum(c[DONTCARE] for c in counts.values()) / max(1, total_all)), 6),
        "skipped": skipped,
        "_per_sample_counts": per_sample,
    }


def _swap(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
