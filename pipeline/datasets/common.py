"""Readers shared by the parsers: images (bytes kept), raw index maps, class files, PNG encoding.

Images are stored as they come: an RGB JPEG or PNG keeps its original bytes (no re-encoding loss,
EXIF orientation left as it is, since annotations are drawn on the stored pixel grid, as in
COCO and ADE20K). Anything else (greyscale, CMYK, palette, alpha, 16-bit) is converted to RGB and
stored as a lossless PNG. Label and instance maps are read as raw indices (``np.array(Image.open)``,
never ``convert``) and only ever resized with NEAREST.
"""

from __future__ import annotations

import colorsys
import errno
import io
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from gaugan.classes import ClassTable
from pipeline.errors import IngestError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ImageData:
    """An image ready to store: its encoded bytes, the extension to store them under, its size."""

    data: bytes
    ext: str  # ".jpg" or ".png"
    width: int
    height: int


def image_files(folder: Path) -> list[Path]:
    """The entries directly in ``folder`` named as JPEG or PNG images, sorted by name. Entries that
    are not readable files (a dangling link, a link loop, a folder) are kept, so that loading them
    names the problem instead of the sample silently vanishing."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)


def unreadable(path: Path, what: str, err: Exception) -> IngestError:
    """The error for a source file that cannot be read, naming why and the fix."""
    if path.is_symlink() and not path.exists():
        try:
            path.stat()
        except OSError as link_err:
            if link_err.errno == errno.ELOOP:
                return IngestError(f"{path}: the {what} is a link loop; replace it by the file")
        return IngestError(f"{path}: the {what} is a link to a missing file ({os.readlink(path)}); fix or remove it")
    if isinstance(err, FileNotFoundError):
        return IngestError(f"{path}: {what} not found")
    if isinstance(err, IsADirectoryError) or path.is_dir():
        return IngestError(f"{path}: a folder where the {what} should be; move it out of the source")
    return IngestError(f"{path}: cannot read the {what}, truncated or corrupt ({err}); replace or remove it")


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG of a uint8/uint16 [H,W] map or a uint8 [H,W,3] RGB image.

    OpenCV with the 'up' filter, run-length zlib strategy and level 1: about 3x faster than PIL's
    defaults on label/instance maps, and smaller files (maps are long runs of equal values).
    """
    import cv2

    array = np.ascontiguousarray(array)
    if array.ndim == 3:
        array = np.ascontiguousarray(array[..., ::-1])  # OpenCV writes BGR
    ok, buf = cv2.imencode(".png", array, _png_params())
    if not ok:
        raise IngestError(f"PNG encoding failed for an array of shape {array.shape} and type {array.dtype}")
    return buf.tobytes()


def _png_params() -> list[int]:
    import cv2

    return [
        cv2.IMWRITE_PNG_COMPRESSION,
        1,
        cv2.IMWRITE_PNG_FILTER,
        cv2.IMWRITE_PNG_FILTER_UP,
        cv2.IMWRITE_PNG_STRATEGY,
        cv2.IMWRITE_PNG_STRATEGY_RLE,
    ]


def load_image(path: Path | str) -> ImageData:
    """Check that the image decodes completely and return what to store.

    RGB JPEGs are verified with a reduced-size (DCT-scaled) decode: every byte of the entropy-coded
    data is still read, so a truncated file fails, at a third of the cost of a full decode.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            fmt, mode, size = im.format, im.mode, im.size
            if fmt == "JPEG" and mode == "RGB":
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                im.load()
                return ImageData(path.read_bytes(), ".jpg", *size)
            if fmt == "PNG" and mode == "RGB":
                im.load()
                return ImageData(path.read_bytes(), ".png", *size)
            rgb = np.array(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise unreadable(path, "image", err) from None
    return ImageData(encode_png(rgb), ".png", rgb.shape[1], rgb.shape[0])


def image_resized(path: Path | str, size: tuple[int, int], quality: int = 95) -> ImageData:
    """Resize an image (bicubic) to ``size`` = (w, h); stored as JPEG q95 4:4:4 (documented loss)."""
    path = Path(path)
    try:
        with Image.open(path) as src:
            im = src.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    except (OSError, SyntaxError, ValueError) as err:
        raise unreadable(path, "image", err) from None
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, subsampling=0)
    return ImageData(buf.getvalue(), ".jpg", *size)


def read_index_map(path: Path | str, what: str = "label map") -> tuple[np.ndarray, bytes | None]:
    """A single-channel index map as raw values, plus its bytes when they can be stored unchanged
    (an 8-bit greyscale PNG); palette images give their indices, never their colours."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            fmt, mode = im.format, im.mode
            arr = np.array(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise unreadable(path, what, err) from None
    if arr.ndim != 2:
        raise IngestError(
            f"{path}: {what} must be a single-channel index image, got mode {mode} with shape "
            f"{arr.shape}; colour-coded maps are not class indices"
        )
    keep = path.read_bytes() if (fmt == "PNG" and mode == "L") else None
    return arr, keep


def default_color(i: int) -> list[int]:
    """A distinct display colour per index (golden-ratio hue walk)."""
    r, g, b = colorsys.hsv_to_rgb((i * 0.61803398875) % 1.0, 0.55 + 0.4 * ((i * 7) % 3) / 2, 0.95 - 0.3 * ((i * 5) % 2))
    return [int(r * 255), int(g * 255), int(b * 255)]


def class_table(
    dataset: str,
    entries: list[dict],
    *,
    has_instances: bool,
    contain_dontcare_label: bool = True,
    ignore: list[int] | None = None,
    notes: str | None = None,
) -> ClassTable:
    """The class table of a parsed dataset (``entries``: [{index, name, color}] for 0..label_nc-1)."""
    if [e["index"] for e in entries] != list(range(len(entries))):
        raise IngestError(f"{dataset}: class indices must run 0..{len(entries) - 1} without gaps")
    if len(entries) > 255:
        raise IngestError(f"{dataset}: {len(entries)} classes; at most 255 are supported (255 is the dontcare value)")
    return ClassTable(
        dataset=dataset,
        names=tuple(str(e["name"]) for e in entries),
        colors=tuple((int(e["color"][0]), int(e["color"][1]), int(e["color"][2])) for e in entries),
        contain_dontcare_label=contain_dontcare_label,
        has_instances=has_instances,
        ignore=tuple(ignore) if ignore is not None else None,
        notes=notes,
    )


def read_class_file(root: Path) -> tuple[list[dict], dict]:
    """``classes.json`` or ``classes.txt`` of a folder source -> (entries, options); see :func:`read_class_path`."""
    js, txt = root / "classes.json", root / "classes.txt"
    if js.is_file() or txt.is_file():
        return read_class_path(js if js.is_file() else txt)
    raise IngestError(
        f"{root}: no class file (missing classes.json or classes.txt); add one, e.g. classes.txt with "
        "one class name per line, or set data.classes (--classes) to coco-stuff, ade20k, cityscapes or a file"
    )


def read_class_path(path: Path) -> tuple[list[dict], dict]:
    """A class file -> (entries, options).

    ``.json``: a list of names, or ``{"classes": [name | {"name", "color"?}], "dataset"?,
    "contain_dontcare_label"?}``. Any other file is text: one class per line, ``name`` or
    ``name,r,g,b``; blank lines and lines starting with ``#`` are skipped. Order gives the index.
    """
    if path.suffix == ".json":
        return _read_class_json(path)
    entries: list[dict] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        i = len(entries)
        try:
            color = [int(v) for v in parts[1:4]] if len(parts) > 1 else default_color(i)
            if len(color) != 3:
                raise ValueError("expected name,r,g,b")
        except ValueError as err:
            raise IngestError(f"{path}:{lineno}: malformed class line {line!r} ({err})") from None
        entries.append({"index": i, "name": parts[0], "color": color})
    if not entries:
        raise IngestError(f"{path}: no classes listed")
    return entries, {}


def _read_class_json(js: Path) -> tuple[list[dict], dict]:
    try:
        data = json.loads(js.read_text())
        items = data["classes"] if isinstance(data, dict) else data
        if not isinstance(items, list) or not items:
            raise ValueError("expected a non-empty list of classes")
        entries = []
        for i, e in enumerate(items):
            name = e if isinstance(e, str) else e["name"]
            color = None if isinstance(e, str) else e.get("color")
            color = [int(v) for v in color] if color is not None else default_color(i)
            if len(color) != 3:
                raise ValueError(f"class {i} colour must be [r, g, b]")
            entries.append({"index": i, "name": str(name), "color": color})
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise IngestError(f"{js}: malformed class file ({type(err).__name__}: {err})") from None
    options = {k: data[k] for k in ("dataset", "contain_dontcare_label") if k in data} if isinstance(data, dict) else {}
    return entries, options


def compact_ids(values: np.ndarray) -> np.ndarray:
    """Distinct values -> ids 1..k in value order (uint16), so every boundary is unchanged."""
    values = np.asarray(values)
    if values.dtype in (np.uint8, np.uint16):  # a lookup table: linear time
        present = np.bincount(values.ravel(), minlength=1) > 0
        lut = np.cumsum(present).astype(np.uint16)
        return lut[values]
    uniq, inverse = np.unique(values, return_inverse=True)
    if uniq.size > 65535:
        raise IngestError(f"{uniq.size} instance ids do not fit in a 16-bit PNG")
    return (inverse.reshape(values.shape) + 1).astype(np.uint16)


def background_segments(instance: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Give pixels outside every object (id 0) one id per label value, after the object ids.

    The reference implementation's COCO instance maps keep the label value wherever no object was
    painted, so its edge channel also marks boundaries between stuff classes; this keeps that
    behaviour without mixing label values into the instance id space. Returns uint16.
    """
    top = int(instance.max()) if instance.size else 0
    if top >= 65536:
        raise IngestError(f"instance ids up to {top} do not fit in a 16-bit PNG")
    free = instance == 0
    if not free.any():
        return instance.astype(np.uint16)
    present = np.bincount(label[free].ravel(), minlength=int(label.max()) + 1) > 0
    lut = (top + np.cumsum(present)).astype(np.int64)  # label value -> id, in value order
    if int(lut[-1]) >= 65536:
        raise IngestError(f"{int(lut[-1])} instance ids do not fit in a 16-bit PNG")
    return np.where(free, lut.astype(np.uint16)[label], instance.astype(np.uint16))


def with_instances(table: ClassTable, has_instances: bool) -> ClassTable:
    """``table`` recording whether the prepared data has instance maps."""
    return table if table.has_instances == has_instances else replace(table, has_instances=has_instances)
