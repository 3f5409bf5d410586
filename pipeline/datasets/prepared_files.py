"""The prepared dataset's two layouts, converted into each other: shards (what ingest writes) and
one file per map (``images/<split>/<id>.jpg|png``, ``labels/``, ``instances/``, ``edges/``), for
people who want to look at the files or feed a tool that wants them.

``export_files`` writes the stored bytes unchanged (the maps are the ingest's PNGs, byte for byte)
and a manifest whose map columns are the file paths; ``import_files`` packs such a tree into
shards as a fresh ingest packs them (same blobs, same order, same ``shard_size_mb``), so shards ->
files -> shards gives back the shards of a fresh ingest byte for byte. ``classes.json`` and
``stats.json`` are copied unchanged. Both write atomically (``pipeline.io.atomic_path``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gaugan.classes import CLASSES_FILE
from gaugan.data import PreparedDataset, read_manifest
from gaugan.layout import KINDS, MANIFEST_FILE, SHARD_COLUMNS, SHARD_DIR, SPLITS, STATS_FILE
from pipeline.datasets.shards import ShardWriter, member_name, placed, sample_blob
from pipeline.errors import IngestError
from pipeline.io import atomic_path

FOLDERS = {"image": "images", "label": "labels", "instance": "instances", "edge": "edges"}
SIDE_FILES = (CLASSES_FILE, STATS_FILE)


def _datasets(root: Path):
    splits = set(read_manifest(root, ["split"])["split"])
    return [PreparedDataset(root, s) for s in SPLITS if s in splits]


def export_files(prepared: Path, out: Path) -> int:
    """Write ``prepared`` (either layout) into ``out`` as one file per map; returns the sample count."""
    prepared, out = Path(prepared), Path(out)
    manifest = read_manifest(prepared)
    rows = {(r["split"], r["id"]): r for r in manifest.astype(object).to_dict("records")}
    written = []
    with atomic_path(out) as tmp:
        for ds in _datasets(prepared):
            for i, sid in enumerate(ds.ids):
                row = dict(rows[(ds.split, sid)])
                ext = Path(str(row["image"])).suffix or ".png"
                for kind, data in ds.member_bytes(i).items():
                    rel = f"{FOLDERS[kind]}/{ds.split}/{sid}{ext if kind == 'image' else '.png'}"
                    row[kind] = rel if data is not None else None
                    if data is not None:
                        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                        (tmp / rel).write_bytes(data)
                for col in SHARD_COLUMNS:
                    row.pop(col, None)
                written.append(row)
        _side_files(prepared, tmp)
        _frame(written, [c for c in manifest.columns if c not in SHARD_COLUMNS]).to_parquet(
            tmp / MANIFEST_FILE, index=False
        )
    return len(written)


def import_files(files: Path, out: Path, shard_size_mb: float) -> int:
    """Pack a prepared dataset of the file layout (``files``) into shards in ``out``; returns the
    sample count."""
    files, out = Path(files), Path(out)
    manifest = read_manifest(files)
    rows = {(r["split"], r["id"]): r for r in manifest.astype(object).to_dict("records")}
    written = []
    with atomic_path(out) as tmp:
        (tmp / SHARD_DIR).mkdir(parents=True)
        for ds in _datasets(files):
            if ds.sharded:
                raise IngestError(f"{files}: already in shards; `prepared export` turns it into files")
            writer = ShardWriter(tmp, ds.split, 0, int(shard_size_mb * 2**20))
            for i, sid in enumerate(ds.ids):
                row = dict(rows[(ds.split, sid)])
                data = ds.member_bytes(i)
                ext = Path(str(row["image"])).suffix
                named = {k: (member_name(sid, k, ext), v) for k, v in data.items() if v is not None}
                blob, info = sample_blob(named)
                row.update({k: named[k][0] if k in named else None for k in KINDS})
                written.append({**row, **placed(info, *writer.add(blob))})
            writer.close()
        _side_files(files, tmp)
        columns = [c for c in manifest.columns if c not in SHARD_COLUMNS] + list(SHARD_COLUMNS)
        _frame(written, columns).to_parquet(tmp / MANIFEST_FILE, index=False)
    return len(written)


def _side_files(src: Path, tmp: Path) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)


def _frame(rows: list[dict], columns: list[str]):
    import pandas as pd

    frame = pd.DataFrame(rows, columns=columns).sort_values(["split", "id"], kind="stable").reset_index(drop=True)
    ints = [c for c in columns if c in ("width", "height") or (c in SHARD_COLUMNS and c not in ("shard", "sha256"))]
    return frame.astype(dict.fromkeys(ints, "int64"))
