"""Reader of the prepared dataset format (written by the ingest stage, ``pipeline.datasets``).

Layout: ``manifest.parquet`` (one row per sample), ``classes.json`` (the :class:`ClassTable`),
``images/``, ``labels/`` (uint8/uint16 class indices, 255 = dontcare), ``instances/`` (ids, 0 =
none) and ``edges/``. Label PNGs are read as raw indices, never converted.

A prepared dataset has one identity, :func:`dataset_id`: a hash of its class table and of the
manifest's (split, id, source hash) rows. Generator and segmenter files, MLflow runs and registered
versions all record it under that name. Its validation split has one of its own,
:func:`val_split_id` (the class table and the validation rows only): what evaluations must share to
be compared, so that a growing training split does not make them incomparable.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from gaugan.classes import ClassTable
from gaugan.errors import DatasetError, MissingFileError

MANIFEST_FILE = "manifest.parquet"
SPLITS = ("train", "val")


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
    again on today's split (pipeline/promotion.py), which costs one evaluation pass, never a wrong
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
    """One split of a prepared dataset (a torch Dataset).

    ``ds[i]`` is ``dict(id=str, image=uint8 [H,W,3], label=int64 [H,W] (255 = dontcare),
    instance=int32 [H,W] or None)``, passed through ``transform(sample)`` when one is given.
    ``ids`` lists the sample ids in order, ``classes`` is the :class:`ClassTable`.
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
        rows = manifest[manifest["split"] == split].sort_values("id").astype(object)
        if rows.empty:
            raise DatasetError(f"{self.root / MANIFEST_FILE}: the {split!r} split is empty")
        self.rows = rows.to_dict("records")
        self.ids = [r["id"] for r in self.rows]
        self.split = split
        self.transform = transform
        self.load_instances = load_instances

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, rel: str, rgb: bool = False) -> np.ndarray:
        path = self.root / rel
        try:
            with Image.open(path) as im:
                if rgb and im.mode != "RGB":
                    return np.array(im.convert("RGB"))  # images only: maps are always read as raw indices
                return np.array(im)
        except OSError as err:  # FileNotFoundError included
            raise MissingFileError(f"{path}: cannot read ({err}); re-run the ingest stage") from None

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        sample = {
            "id": row["id"],
            "image": self._read(row["image"], rgb=True),
            "label": self._read(row["label"]).astype(np.int64),
            "instance": None,
        }
        if self.load_instances and not _isnull(row.get("instance")):
            sample["instance"] = self._read(row["instance"]).astype(np.int32)
        return self.transform(sample) if self.transform else sample


def _isnull(value) -> bool:
    """Missing manifest path: None, or NaN/empty as some parquet readers return it."""
    return value is None or (isinstance(value, float) and value != value) or value == ""
