"""The class table: what each label value means and how it is drawn.

One type, :class:`ClassTable`, everywhere: the prepared dataset's ``classes.json``, the copy inside
generator and segmenter files, the palette of colour-coded label maps and sample grids. Label
values are one-hot channel indices ``0..label_nc-1``; :data:`DONTCARE` (255) marks unlabelled
pixels. Only numpy is needed here (the ingest workers import this module without torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gaugan.errors import DatasetError, MissingFileError, UnknownColorError

DONTCARE = 255  # the label value of unlabelled pixels; the model's extra "dontcare" channel
CLASSES_FILE = "classes.json"
FORMAT_VERSION = 1
# Datasets whose standard segmentation protocol leaves a real class out (ADE20K: 0 = "other").
DEFAULT_IGNORE = {"ade20k": (0,), "ade20k-full": (0,)}
_DONTCARE_COLOR = (0, 0, 0)


@dataclass(frozen=True)
class ClassTable:
    """``names[i]`` and ``colors[i]`` describe label value ``i``.

    ``ignore`` lists classes that segmentation scores leave out (None: the dataset's standard,
    see :meth:`ignored`); ``notes`` is free text written by the parser (e.g. ADE20K's class 0).
    """

    dataset: str
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    contain_dontcare_label: bool = True
    has_instances: bool = False
    ignore: tuple[int, ...] | None = None
    notes: str | None = None
    extra: dict = field(default_factory=dict, compare=False)  # other keys of the file, kept as they were

    def __post_init__(self) -> None:
        if len(self.names) != len(self.colors):
            raise DatasetError(
                f"class table of {self.dataset!r}: {len(self.names)} names but {len(self.colors)} colours"
            )
        if not self.names:
            raise DatasetError(f"class table of {self.dataset!r} lists no classes")
        if len(self.names) > DONTCARE:
            raise DatasetError(f"{len(self.names)} classes; at most {DONTCARE} are supported ({DONTCARE} is dontcare)")

    @property
    def label_nc(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------------ file format
    def to_dict(self) -> dict:
        """The ``classes.json`` document."""
        doc = {
            **self.extra,
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "label_nc": self.label_nc,
            "dontcare": DONTCARE,
            "contain_dontcare_label": self.contain_dontcare_label,
            "has_instances": self.has_instances,
            "classes": [
                {"index": i, "name": n, "color": list(c)}
                for i, (n, c) in enumerate(zip(self.names, self.colors, strict=True))
            ],
        }
        if self.ignore is not None:
            doc["ignore"] = list(self.ignore)
        if self.notes is not None:
            doc["notes"] = self.notes
        return doc

    @classmethod
    def from_dict(cls, data: dict, source: str = CLASSES_FILE) -> ClassTable:
        try:
            entries = sorted(data["classes"], key=lambda c: int(c["index"]))
            indices = [int(c["index"]) for c in entries]
            if int(data["label_nc"]) != len(entries):
                raise ValueError(f"label_nc is {data['label_nc']} but {len(entries)} classes are listed")
            if indices != list(range(len(entries))):
                raise ValueError(f"class indices must be 0..{len(entries) - 1}, each once")
            known = {
                "format_version",
                "dataset",
                "label_nc",
                "dontcare",
                "contain_dontcare_label",
                "has_instances",
                "classes",
                "ignore",
                "notes",
            }
            return cls(
                dataset=str(data["dataset"]),
                names=tuple(str(c["name"]) for c in entries),
                colors=tuple(_rgb(c["color"]) for c in entries),
                contain_dontcare_label=bool(data.get("contain_dontcare_label", True)),
                has_instances=bool(data.get("has_instances", False)),
                ignore=tuple(int(i) for i in data["ignore"]) if data.get("ignore") is not None else None,
                notes=data.get("notes"),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"{source}: malformed class table ({err}); re-run the ingest stage") from None

    @classmethod
    def load(cls, prepared_root: Path | str) -> ClassTable:
        """``<prepared_root>/classes.json``."""
        path = Path(prepared_root) / CLASSES_FILE
        if not path.is_file():
            raise MissingFileError(f"{path}: no class table; run the ingest stage to prepare {prepared_root}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}: not valid JSON ({err}); re-run the ingest stage") from None
        return cls.from_dict(data, str(path))

    # ------------------------------------------------------------------ scoring
    def ignored(self, override: list[int] | tuple[int, ...] | None = None) -> list[int]:
        """Classes left out of mIoU/accuracy: ``override`` > the table's ``ignore`` > the dataset's standard."""
        if override is not None:
            chosen = tuple(override)
        elif self.ignore is not None:
            chosen = self.ignore
        else:
            chosen = DEFAULT_IGNORE.get(self.dataset, ())
        bad = [c for c in chosen if not 0 <= int(c) < self.label_nc]
        if bad:
            raise DatasetError(
                f"ignored classes {bad} are outside 0..{self.label_nc - 1} (the classes of {self.dataset!r})"
            )
        return sorted(int(c) for c in chosen)

    def describe(self) -> str:
        shown = ", ".join(self.names[:5]) + (", ..." if self.label_nc > 5 else "")
        return f"dataset {self.dataset!r}, label_nc {self.label_nc}, classes [{shown}]"

    def differences(self, other: ClassTable) -> list[str]:
        """What makes ``other`` a different set of classes (empty: the same)."""
        if self.label_nc != other.label_nc:
            return [f"label_nc {self.label_nc} vs {other.label_nc}"]
        for i, (a, b) in enumerate(zip(self.names, other.names, strict=True)):
            if a != b:
                return [f"class {i} is {a!r} vs {b!r}"]
        return []

    # ------------------------------------------------------------------ colours
    def palette(self) -> np.ndarray:
        """``[256, 3]`` uint8: class colours, black for dontcare and for values without a class."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.label_nc] = np.asarray(self.colors, dtype=np.uint8)
        table[DONTCARE] = _DONTCARE_COLOR
        return table

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """Class-index maps ``[..., H, W]`` -> RGB ``[..., H, W, 3]`` uint8."""
        labels = np.asarray(labels).astype(np.int64)
        valid = (labels >= 0) & (labels < 256)
        return self.palette()[np.where(valid, labels, DONTCARE)]

    def indices_from_colors(self, rgb: np.ndarray) -> np.ndarray:
        """Colour-coded maps ``[..., H, W, 3]`` (uint8) -> class indices ``[..., H, W]`` (int64).

        Colours must be exact palette colours; black is dontcare when no class is black and the
        model has a dontcare channel. Anything else raises :class:`UnknownColorError` naming the
        colour, how many pixels have it and the nearest class.
        """
        rgb = np.asarray(rgb)
        if rgb.ndim < 3 or rgb.shape[-1] != 3:
            raise UnknownColorError(f"a colour-coded label map must be [H, W, 3] RGB, got shape {rgb.shape}")
        codes = _color_codes(rgb)
        lookup: dict[int, int] = {}
        for i, code in enumerate(_color_codes(np.asarray(self.colors, dtype=np.int64))):
            lookup.setdefault(int(code), i)  # classes sharing a colour (published palettes do): the first
        black = int(_color_codes(np.asarray(_DONTCARE_COLOR))[()])
        if self.contain_dontcare_label:
            lookup.setdefault(black, DONTCARE)
        uniq, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
        unknown = [(int(c), int(n)) for c, n in zip(uniq, counts, strict=True) if int(c) not in lookup]
        if unknown:
            raise UnknownColorError(self._unknown_colors_message(unknown))
        values = np.asarray([lookup[int(c)] for c in uniq], dtype=np.int64)
        return values[inverse].reshape(codes.shape)

    def _unknown_colors_message(self, unknown: list[tuple[int, int]]) -> str:
        colors = np.asarray(self.colors, dtype=np.int64)
        parts = []
        for code, count in sorted(unknown, key=lambda u: -u[1])[:5]:
            rgb = np.asarray([(code >> 16) & 255, (code >> 8) & 255, code & 255])
            nearest = int(np.argmin(((colors - rgb) ** 2).sum(axis=1)))
            parts.append(
                f"{tuple(int(v) for v in rgb)} on {count} pixels (nearest class: {nearest} "
                f"{self.names[nearest]!r} {self.colors[nearest]})"
            )
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        return (
            f"the label map has colours that are not in the palette of {self.dataset!r}: "
            + "; ".join(parts)
            + more
            + ". Paint with the class colours exactly (no antialiasing), or give class indices."
        )


def _rgb(color) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in color)
    return r, g, b


def _color_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb).astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
