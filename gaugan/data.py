"""Reader of the prepared dataset format (written by the ingest stage, ``pipeline.datasets``).

Layout: ``manifest.parquet`` (one row per sample), ``classes.json`` (the :class:`ClassTable`) and
the samples' bytes: tar shards under ``shards/`` (what ingest writes; the manifest gives each
sample's shard and byte range), or one file per map under ``images/``, ``labels/`` (uint8/uint16
class indices, 255 = dontcare), ``instances/`` (ids, 0 = none) and ``edges/`` (the layout of
``gaugan-pipeline prepared export``). :class:`PreparedDataset` reads both, and every stage uses it;
shards through :class:`gaugan.shards.ShardReader`, the reader ingest checks kept samples with.
The layout's names are in ``gaugan.layout``. Label PNGs are read as raw indices, never converted.

A prepared dataset has one identity, :func:`dataset_id`: a hash of its class table and of the
manifest's (split, id, source hash) rows. Generator and segmenter files, MLflow runs and registered
versions all record it under that name. Its validation split has one of its own,
:func:`val_split_id` (the class table and the validation rows only): what evaluations must share to
be compared, so that a growing training split does not make them incomparable.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from gaugan.classes import ClassTable
from gaugan.errors import DatasetError, MissingFileError
from gaugan.layout import KINDS, MANIFEST_FILE, SHARD_COLUMNS, SPLITS, isnull
from gaugan.shards import ShardReader, member_data


def read_manifest(root: Path | str, columns: list[str] | None = None):
    """The manifest as a pandas DataFrame; errors name the file and the fix."""
    import pandas as pd

    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: no manifest; run the ingest stage to prepare {root}")
    try:
        manifest = pd.read_parquet(path, columns=columns)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise DatasetError(f"{path}: unreadable manifest ({err}); re-run the ingest stage") from None
    return manifest


def split_size(root: Path | str, split: str) -> int:
    """Number of samples of ``split`` (0 when the split is absent)."""
    return int((read_manifest(root, ["split"])["split"] == split).sum())


def dataset_id(root: Path | str) -> str:
    """The prepared dataset's identity: 16 hex digits of a sha256 over its class table and its
    manifest's (split, id, source hash) rows. Equal ids mean the same samples and the same classes."""
    manifest = read_manifest(root, ["split", "id", "source_hash"])
    rows = sorted(zip(*(manifest[c].astype(str) for c in ("split", "id", "source_hash")), strict=True))
    return _identity(ClassTable.load(root).to_dict(), rows)


def val_split_id(root: Path | str) -> str:
    """The validation split's identity: 16 hex digits of a sha256 over the class table and the
    validation rows' (id, source hash). Training samples added or changed leave it as it is.

    The whole class table is in it, also when classes are appended that no validation map uses: the
    table decides what a label value means and which classes mIoU averages over (``average: all``
    counts every scored class), and telling an appended class from one that the validation maps use
    would mean reading every label map. A changed table thus makes the registry score the champion
    again on today's split (pipeline/registry/promotion.py), which costs one evaluation pass, never a wrong
    comparison.
    """
    manifest = read_manifest(root, ["split", "id", "source_hash"])
    val = manifest[manifest["split"] == "val"]
    rows = sorted(zip(val["id"].astype(str), val["source_hash"].astype(str), strict=True))
    return _identity(ClassTable.load(root).to_dict(), rows)


def _identity(classes: dict, rows: list) -> str:
    payload = json.dumps({"classes": classes, "samples": rows}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class PreparedDataset(Dataset):
    """One split of a prepared dataset (a torch Dataset), whatever its layout: shards (tar files
    addressed by the manifest's byte ranges, what ingest writes) or one file per map.

    ``ds[i]`` is ``dict(id=str, image=uint8 [H,W,3], label=int64 [H,W] (255 = dontcare),
    instance=int32 [H,W] or None)``, passed through ``transform(sample)`` when one is given.
    ``ids`` lists the sample ids in order, ``classes`` is the :class:`ClassTable`;
    :meth:`member_bytes` gives a sample's stored bytes. The manifest is held as arrays (about 170
    bytes per sample), and a sample is one ``pread`` of its byte range, checked against the
    manifest's sha256 before it is decoded.
    """

    def __init__(self, root: Path | str, split: str, transform=None, load_instances: bool = True):
        self.root = Path(root)
        if split not in SPLITS:
            raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
        manifest = read_manifest(self.root)
        self.classes = ClassTable.load(self.root)
        missing = {"id", "split", "image", "label", "instance"} - set(manifest.columns)
        if missing:
            raise DatasetError(
                f"{self.root / MANIFEST_FILE}: manifest lacks the columns {sorted(missing)}; re-run the ingest stage"
            )
        rows = manifest[manifest["split"] == split].sort_values("id", kind="stable")
        if rows.empty:
            raise DatasetError(f"{self.root / MANIFEST_FILE}: the {split!r} split is empty")
        self.ids = [str(i) for i in rows["id"]]
        self.split = split
        self.transform = transform
        self.load_instances = load_instances
        self.sharded = "shard" in rows.columns and bool(rows["shard"].notna().all())
        self._store = _ShardStore(self.root, split, rows) if self.sharded else _FileStore(self.root, rows)

    def __len__(self) -> int:
        return len(self.ids)

    def member_bytes(self, index: int) -> dict[str, bytes | None]:
        """The stored bytes of sample ``index``: image, label, instance, edge (None where absent)."""
        return self._store.read(index, self.ids[index])

    def __getitem__(self, index: int) -> dict:
        skip = ("edge",) if self.load_instances else ("instance", "edge")  # edges come from the instances
        data = self._store.read(index, self.ids[index], skip=skip)
        sample = {
            "id": self.ids[index],
            "image": self._decode(data, index, "image"),
            "label": self._decode(data, index, "label").astype(np.int64),
            "instance": None,
        }
        if self.load_instances and data["instance"] is not None:
            sample["instance"] = self._decode(data, index, "instance").astype(np.int32)
        return self.transform(sample) if self.transform else sample

    def _decode(self, data: dict[str, bytes | None], index: int, kind: str) -> np.ndarray:
        raw = data[kind]
        where = self._store.where(index, self.ids[index], kind)
        if raw is None:
            raise DatasetError(f"{where}: the manifest names no {kind}; re-run the ingest stage")
        try:
            with Image.open(io.BytesIO(raw)) as im:
                if kind == "image" and im.mode != "RGB":
                    return np.array(im.convert("RGB"))  # images only: maps are always read as raw indices
                return np.array(im)
        except OSError as err:
            raise DatasetError(f"{where}: cannot decode the {kind} ({err}); re-run the ingest stage") from None


class _FileStore:
    """One file per map (the layout of ``gaugan-pipeline prepared export``)."""

    def __init__(self, root: Path, rows):
        self.root = root
        self.paths = {k: [None if isnull(v) else str(v) for v in rows[k]] if k in rows else None for k in KINDS}

    def where(self, index: int, sample_id: str, kind: str = "label") -> str:
        paths = self.paths[kind]
        return str(self.root / str(paths[index] if paths is not None else kind))

    def read(self, index: int, sample_id: str, skip: tuple[str, ...] = ()) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for kind in KINDS:
            paths = self.paths[kind]
            rel = None if paths is None or kind in skip else paths[index]
            if rel is None:
                out[kind] = None
                continue
            try:
                out[kind] = (self.root / rel).read_bytes()
            except OSError as err:  # FileNotFoundError included
                raise MissingFileError(f"{self.root / rel}: cannot read ({err}); re-run the ingest stage") from None
        return out


class _ShardStore:
    """Samples inside tar shards, read by :class:`gaugan.shards.ShardReader`: each row gives its shard,
    its byte range (offset, length, sha256) and each member's data offset and size (absolute in the
    shard; -1 where absent)."""

    def __init__(self, root: Path, split: str, rows):
        missing = set(SHARD_COLUMNS) - set(rows.columns)
        if missing:
            raise DatasetError(
                f"{root / MANIFEST_FILE}: manifest lacks the shard columns {sorted(missing)}; re-run the ingest stage"
            )
        codes, self.shards = _factorize(rows["shard"])
        self.shard_of = codes.astype(np.int32)
        self.offset = rows["offset"].to_numpy(np.int64)
        self.length = rows["length"].to_numpy(np.int64)
        self.sha = np.frombuffer(bytes.fromhex("".join(rows["sha256"])), np.uint8).reshape(len(rows), 32)
        self.members = np.stack(
            [rows[f"{k}_{f}"].to_numpy(np.int64) for k in KINDS for f in ("offset", "size")], axis=1
        ).reshape(len(rows), len(KINDS), 2)
        for k, kind in enumerate(KINDS):  # a map the manifest names no member for is absent
            self.members[rows[kind].isna().to_numpy(), k, 0] = -1
        self.split = split
        self.reader = ShardReader(root)

    def where(self, index: int, sample_id: str, kind: str = "") -> str:
        return self.reader.where(self.shards[self.shard_of[index]], sample_id, self.split, kind)

    def read(self, index: int, sample_id: str, skip: tuple[str, ...] = ()) -> dict[str, bytes | None]:
        start = int(self.offset[index])
        shard, sha = self.shards[self.shard_of[index]], self.sha[index].tobytes()
        data = self.reader.read(shard, start, int(self.length[index]), sha, sample_id, self.split)
        out: dict[str, bytes | None] = {}
        for k, kind in enumerate(KINDS):
            off, size = (int(v) for v in self.members[index, k])
            out[kind] = None if kind in skip else member_data(data, start, off, size)
        return out


def _factorize(values) -> tuple[np.ndarray, list[str]]:
    import pandas as pd

    codes, uniques = pd.factorize(values, sort=True)
    return codes, [str(u) for u in uniques]
