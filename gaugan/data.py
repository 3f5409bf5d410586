"""Reader of the prepared dataset format (written by ``pipeline.ingest``).

Layout: ``manifest.parquet`` (one row per sample), ``classes.json`` (class table),
``images/``, ``labels/`` (uint8/uint16 class indices, 255 = dontcare), ``instances/`` (ids, 0 =
none) and ``edges/``. Label PNGs are read as raw indices, never converted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


@dataclass(frozen=True)
class ClassTable:
    """classes.json as read: ``names[i]`` and ``colors[i]`` describe label value ``i``."""

    dataset: str
    label_nc: int
    dontcare: int = 255
    contain_dontcare_label: bool = True
    has_instances: bool = False
    names: list[str] = field(default_factory=list)
    colors: list[tuple[int, int, int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "format_version": 1,
            "dataset": self.dataset,
            "label_nc": self.label_nc,
            "dontcare": self.dontcare,
            "contain_dontcare_label": self.contain_dontcare_label,
            "has_instances": self.has_instances,
            "classes": [
                {"index": i, "name": n, "color": list(c)} for i, (n, c) in enumerate(zip(self.names, self.colors))
            ],
        }


def class_table_from_dict(data: dict, source: str = "classes.json") -> ClassTable:
    try:
        classes = sorted(data["classes"], key=lambda c: int(c["index"]))
        table = ClassTable(
            dataset=str(data["dataset"]),
            label_nc=int(data["label_nc"]),
            dontcare=int(data.get("dontcare", 255)),
            contain_dontcare_label=bool(data.get("contain_dontcare_label", True)),
            has_instances=bool(data.get("has_instances", False)),
            names=[str(c["name"]) for c in classes],
            colors=[tuple(int(v) for v in c["color"]) for c in classes],
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{source}: malformed class table ({err!r}); re-run the ingest stage") from None
    if len(table.names) != table.label_nc:
        raise ValueError(f"{source}: label_nc is {table.label_nc} but {len(table.names)} classes are listed")
    if [int(c["index"]) for c in classes] != list(range(table.label_nc)):
        raise ValueError(f"{source}: class indices must be 0..{table.label_nc - 1}, each once")
    return table


def load_class_table(root: Path | str) -> ClassTable:
    path = Path(root) / "classes.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no class table; run the ingest stage to prepare {root}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); re-run the ingest stage") from None
    return class_table_from_dict(data, str(path))


def colorize(label: np.ndarray, classes: ClassTable) -> np.ndarray:
    """Class indices [H,W] -> RGB uint8 [H,W,3] with the class colours; dontcare and any value
    outside 0..label_nc-1 are black."""
    palette = np.zeros((classes.label_nc + 1, 3), dtype=np.uint8)  # last row: black
    if classes.colors:
        palette[: len(classes.colors)] = np.asarray(classes.colors, dtype=np.uint8)
    label = np.asarray(label).astype(np.int64)
    valid = (label >= 0) & (label < classes.label_nc)
    return palette[np.where(valid, label, classes.label_nc)]


class PreparedDataset(Dataset):
    """One split of a prepared dataset (a torch Dataset).

    ``ds[i]`` is ``dict(id=str, image=uint8 [H,W,3], label=int64 [H,W] (255 = dontcare),
    instance=int32 [H,W] or None)``, passed through ``transform(sample)`` when one is given.
    ``ids`` lists the sample ids in order, ``classes`` is the :class:`ClassTable`.
    """

    def __init__(self, root: Path | str, split: str, transform=None, load_instances: bool = True):
        import pandas as pd

        self.root = Path(root)
        manifest_path = self.root / "manifest.parquet"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: no manifest; run the ingest stage to prepare {self.root}")
        self.classes = load_class_table(self.root)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        try:
            manifest = pd.read_parquet(manifest_path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise ValueError(f"{manifest_path}: unreadable manifest ({err}); re-run the ingest stage") from None
        missing = {"id", "split", "image", "label", "instance"} - set(manifest.columns)
        if missing:
            raise ValueError(f"{manifest_path}: manifest lacks the columns {sorted(missing)}; re-run the ingest stage")
        rows = manifest[manifest["split"] == split].sort_values("id").astype(object)
        if rows.empty:
            raise ValueError(f"{manifest_path}: the {split!r} split is empty")
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
                    im = im.convert("RGB")  # images only: maps are always read as raw indices
                return np.array(im)
        except OSError as err:  # FileNotFoundError included
            raise FileNotFoundError(f"{path}: cannot read ({err}); re-run the ingest stage") from None

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
