"""What evaluation needs from a prepared dataset: the evaluation size, resizing, fingerprints, ignore lists.

Evaluation runs at the generator's output size, ``(round(crop_size / aspect_ratio), crop_size)``:
SPADE's generator has a fixed output size (its first feature map is crop_size / 2^k), and the
reference test protocol resizes the whole validation image to it (load_size = crop_size at test,
no crop). Real images are resized bicubic, label and instance maps nearest (the same as
``gaugan.transforms`` at test time), so real and generated images, label maps and segmenter
inputs all share one size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DONTCARE = 255
# Datasets whose standard segmentation protocol ignores a real class (ADE20K: 0 = "other").
DEFAULT_IGNORE = {"ade20k": [0], "ade20k-full": [0]}


def eval_hw(crop_size: int, aspect_ratio: float = 1.0) -> tuple[int, int]:
    return max(1, round(crop_size / aspect_ratio)), int(crop_size)


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H,W,3]`` -> ``[h,w,3]``, bicubic (cv2, as the training transforms)."""
    import cv2

    if image.shape[:2] == tuple(hw):
        return np.ascontiguousarray(image)
    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)


def resize_map(values: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Label or instance map ``[H,W]`` -> ``[h,w]``, nearest, values kept (int64 out)."""
    import cv2

    if values.shape[:2] == tuple(hw):
        return values.astype(np.int64, copy=False)
    out = cv2.resize(values.astype(np.int32), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return out.astype(np.int64)


def read_classes_json(prepared_root: Path) -> dict:
    path = Path(prepared_root) / "classes.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no classes.json; is {prepared_root} a prepared dataset (run the ingest stage)?"
        )
    return json.loads(path.read_text())


def class_names(classes: dict) -> list[str]:
    items = sorted(classes.get("classes", []), key=lambda c: c["index"])
    return [str(c["name"]) for c in items]


def ignore_classes(classes: dict, override: Sequence[int] | None = None) -> list[int]:
    """Classes left out of mIoU/accuracy: params override > classes.json ``ignore`` > dataset default."""
    if override is not None:
        ignore = list(override)
    elif "ignore" in classes:
        ignore = list(classes["ignore"] or [])
    else:
        ignore = list(DEFAULT_IGNORE.get(str(classes.get("dataset", "")), []))
    label_nc = int(classes["label_nc"])
    bad = [c for c in ignore if not 0 <= int(c) < label_nc]
    if bad:
        raise ValueError(f"ignored classes {bad} are outside 0..{label_nc - 1} (label_nc from classes.json)")
    return sorted(int(c) for c in ignore)


def split_size(prepared_root: Path, split: str) -> int:
    """Number of samples of ``split`` in the manifest (0 when the split is absent)."""
    import pandas as pd

    manifest = Path(prepared_root) / "manifest.parquet"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no manifest; run the ingest stage to prepare {prepared_root}")
    return int((pd.read_parquet(manifest, columns=["split"])["split"] == split).sum())


def dataset_fingerprint(prepared_root: Path) -> str:
    """Short content hash of the prepared dataset: classes.json plus the manifest's ids, splits, hashes."""
    import pandas as pd

    root = Path(prepared_root)
    h = hashlib.sha256()
    h.update((root / "classes.json").read_bytes())
    manifest = root / "manifest.parquet"
    if manifest.is_file():
        df = pd.read_parquet(manifest)
        cols = [c for c in ("split", "id", "source_hash") if c in df.columns]
        rows = sorted(zip(*(df[c].astype(str) for c in cols))) if cols else []
        h.update(json.dumps(rows).encode())
    return h.hexdigest()[:16]
