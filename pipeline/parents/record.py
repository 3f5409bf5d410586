"""The parent record: ``parent.json`` and the file names of ``train.parent_dir``.

resolve-parent writes the folder (:mod:`pipeline.parents.resolve`); train, train-segmenter, register and
the retraining summary read it, only through :class:`ParentRecord`. Nothing in it depends on the time
or the machine, so the folder is byte-identical as long as the parent is the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from pipeline.errors import MissingInputError, TrainError
from pipeline.io import sha256_file

PARENT_JSON = "parent.json"
GENERATOR_FILE = "generator.pt"
STATE_FILE = "train_state.pt"
SEGMENTER_FILE = "segmenter.pt"  # the segmenter the parent was scored with: train-segmenter continues from it

ParentKind = Literal["none", "registry", "file", "reference"]
# the keys parent.json holds for each kind besides init_from and kind (files: once fetched)
_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "registry": ("name", "alias", "version", "run_id", "dataset_id", "uri", "files"),
    "file": ("uri", "run_id", "dataset_id", "files"),
    "reference": ("uri", "sources", "files"),
}
# what a trained model records of its parent (the generator file's meta, the run's and the version's tags)
SUMMARY_KEYS = ("kind", "init_from", "uri", "name", "version", "run_id", "dataset_id")
TAG_KEYS = ("kind", "uri", "version", "run_id", "dataset_id")


@dataclass
class ParentRecord:
    """What ``train.init_from`` resolved to: its kind, the registered version or file it names, and the
    sha256 of each file in the folder (``files``; ``sources``: an NVlabs folder's original files)."""

    init_from: str | None
    kind: ParentKind = "none"
    name: str | None = None
    alias: str | None = None
    version: int | None = None
    run_id: str | None = None
    dataset_id: str | None = None
    uri: str | None = None
    sources: dict[str, str] | None = None
    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: dict) -> ParentRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def to_json(self) -> dict:
        """parent.json's content: the keys of this kind (``files`` once the files are there)."""
        keys = [k for k in _KEYS[self.kind] if k != "files" or self.files]
        return {"init_from": self.init_from, "kind": self.kind, **{k: getattr(self, k) for k in keys}}

    def write(self, folder: Path) -> None:
        (folder / PARENT_JSON).write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, folder: Path) -> ParentRecord | None:
        """The folder's record as it stands (None without one); :meth:`load` checks it."""
        path = folder / PARENT_JSON
        return cls.from_json(json.loads(path.read_text())) if path.is_file() else None

    @classmethod
    def load(cls, folder: Path, init_from: str | None) -> ParentRecord:
        """The record, refusing one of another ``train.init_from`` or whose files changed since it was
        written. Without one, ``init_from: null`` means no parent (the train command run by hand)."""
        path = folder / PARENT_JSON
        record = cls.read(folder)
        if record is None:
            if init_from is None:
                return cls(init_from=None)
            raise MissingInputError(
                f"{path}: no parent record for train.init_from {init_from!r}; run the resolve-parent stage first "
                "(`dvc repro` does, or `gaugan-pipeline resolve-parent`)"
            )
        if record.init_from != init_from:
            raise TrainError(
                f"{path} was resolved for train.init_from {record.init_from!r}, params.yaml says {init_from!r}; "
                "run the resolve-parent stage again (`dvc repro` does)"
            )
        for name, expected in record.files.items():
            if not (folder / name).is_file() or sha256_file(folder / name) != expected:
                raise TrainError(
                    f"{folder / name} is not the file {path} records (sha256 {expected[:12]}...); "
                    "run the resolve-parent stage again"
                )
        return record

    def weights_file(self) -> str:
        """The file train loads: the training state when there is one (it has D and the EMA; an NVlabs
        checkpoint was converted to one), else the generator file."""
        return STATE_FILE if STATE_FILE in self.files else GENERATOR_FILE

    def source(self) -> str:
        """The parent as a trainer's log names it."""
        return f"{self.init_from} (version {self.version})" if self.kind == "registry" else str(self.uri)

    def identity(self) -> dict | None:
        """What a resume checkpoint must match besides the settings: the exact parent (None: no parent)."""
        if self.kind == "none":
            return None
        return {"kind": self.kind, "uri": self.uri, "version": self.version, "run_id": self.run_id, "files": self.files}

    def summary(self, warnings: list[str]) -> dict:
        """The parent as the generator file's meta ``parent`` records it (read back by :func:`parent_tags`)."""
        found = {k: getattr(self, k) for k in SUMMARY_KEYS}
        return {**{k: v for k, v in found.items() if v is not None}, "warnings": warnings}


def describe_parent(record: ParentRecord | None) -> str:
    """One line on a parent: the retraining's summary and resolve-parent's log say it so."""
    if record is None or record.kind == "none":
        return "step 0 (no parent model)"
    if record.kind == "registry":
        return (
            f"{record.init_from} = version {record.version} of {record.name} "
            f"(run {record.run_id}, dataset {record.dataset_id})"
        )
    return f"{record.kind} {record.init_from}"


def parent_tags(summary: dict | None) -> dict[str, str]:
    """A parent summary (:meth:`ParentRecord.summary`, a generator file's meta ``parent``) as MLflow tags:
    parent_kind, parent_uri, parent_version, parent_run_id, parent_dataset_id."""
    summary = summary or {}
    return {f"parent_{k}": str(summary[k]) for k in TAG_KEYS if summary.get(k) is not None}
