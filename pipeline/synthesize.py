"""``gaugan-pipeline synthesize``: a label map PNG in, an image PNG out (a thin adapter over the Synthesizer).

The model is a registered one (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``), any other MLflow
model URI, or a local generator file (:func:`pipeline.registry.load_synthesizer`). The label map is
a single-channel PNG of class indices (palette images give their indices, never their colours), or
an RGB PNG painted in the model's class colours. The image has the label map's size
(:meth:`gaugan.synthesizer.Synthesizer.synthesize` handles sizes and checks values).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gaugan.errors import InputError
from pipeline.errors import MissingInputError
from pipeline.grids import write_png


def read_png(path: Path | str, what: str) -> np.ndarray:
    """A PNG's raw values: [H, W] for single-channel images (L, P, I, I;16), [H, W, 3] for RGB(A)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: {what} not found")
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.array(im.convert("RGB") if mode in ("RGBA", "LA", "CMYK") else im)
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{path}: not a readable image ({err})") from None
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3):
        return arr
    raise InputError(f"{path}: a {what} must be single-channel indices or RGB colours, got shape {arr.shape} ({mode})")


def synthesize(
    model: str,
    label_path: Path | str,
    out_path: Path | str,
    instance_path: Path | str | None = None,
    seed: int | None = None,
    tracking_uri: str | None = None,
) -> Path:
    """Write the image generated from one label map (PNG, written atomically); returns ``out_path``.

    ``tracking_uri``: where registered models live; default ``MLFLOW_TRACKING_URI``, else
    ``sqlite:///<cwd>/mlflow.db``. Models trained with instance maps use ``instance_path``; without
    one, the label map stands in for it (edges at class boundaries only), with a warning.
    """
    from pipeline.registry import load_synthesizer

    label = read_png(label_path, "label map")
    instance = read_png(instance_path, "instance map") if instance_path else None
    if instance is not None and instance.ndim != 2:
        raise InputError(f"{instance_path}: an instance map must have one channel of ids, got shape {instance.shape}")
    synth = load_synthesizer(model, tracking_uri)
    if label.ndim == 3:
        label = synth.labels_from_colors(label)
    if instance is not None and instance.shape != label.shape:
        raise InputError(f"{instance_path}: instance map {instance.shape} and label map {label.shape} differ in size")
    image = synth.synthesize(label, instance, seed=seed)[0]
    return write_png(Path(out_path), image)
