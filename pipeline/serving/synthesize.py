"""``gaugan-pipeline synthesize``: label map PNGs in, image PNGs out (a thin adapter over the Synthesizer).

The model is a registered one (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``), any other MLflow
model URI, or a local generator file (:func:`load_model`; spectral norm folded for speed). A label
map is a single-channel PNG of class indices (palette images give their indices, never their
colours), or an RGB PNG painted in the model's class colours. The image has the label map's size
(:meth:`gaugan.synthesizer.Synthesizer.synthesize` handles sizes and checks values). Models with a
style encoder take a style image and give several samples (seed, seed + 1, ...). A folder of label
maps gives a folder of images. The painting app (``pipeline/serving/app``) decodes its uploads here too.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gaugan.errors import InputError
from pipeline.errors import MissingInputError, ModelNotFoundError
from pipeline.evaluation.grids import write_png

MAX_SEED = 2**31 - 1


def load_model(model: str, tracking_uri: str | None = None, device: str = "auto"):
    """A Synthesizer ready for serving (spectral norm folded) from an MLflow URI or a generator file."""
    from gaugan.synthesizer import Synthesizer
    from pipeline.registry.versions import is_mlflow_uri, load_pyfunc

    if is_mlflow_uri(model):  # the pyfunc folds when it loads
        return load_pyfunc(model, tracking_uri).unwrap_python_model().synth
    if not Path(model).is_file():
        raise ModelNotFoundError(
            f"{model}: not a generator file, and not an MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION)"
        )
    return Synthesizer.from_checkpoint(model, device=device, fold=True)


def decode_png(
    data: bytes, what: str, source: str, png_only: bool = True, max_pixels: int | None = None, rgb: bool = False
) -> np.ndarray:
    """Image bytes -> raw values: [H, W] for single-channel images (L, P, I, I;16), [H, W, 3] for RGB(A);
    ``rgb``: always [H, W, 3] colours (a photo, whatever its mode).

    ``max_pixels`` (the app's ``app.max_pixels``) is checked on the declared size, before any pixel is
    decoded; a size past Pillow's own decompression-bomb limit is refused the same way."""
    from PIL import Image, UnidentifiedImageError

    limit = f"the limit of {max_pixels} pixels (app.max_pixels)" if max_pixels is not None else "the limit"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if png_only and im.format != "PNG":
                raise InputError(f"{source}: a {what} must be a PNG (lossless), got {im.format or 'an unknown format'}")
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise InputError(f"{source}: {im.width}x{im.height} is over {limit}")
            mode = im.mode
            if rgb and mode.startswith("I"):  # 16/32-bit grey: Pillow's RGB conversion clips, so scale to 8 bits
                wide = np.array(im, dtype=np.float64)
                top = wide.max() if wide.size and wide.max() > 255 else 255.0
                arr = np.repeat(np.clip(np.round(wide / top * 255), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
            else:
                arr = np.array(im.convert("RGB") if rgb or mode in ("RGBA", "LA", "CMYK", "YCbCr") else im)
    except Image.DecompressionBombError:
        bomb = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise InputError(
            f"{source}: it declares more than {bomb} pixels, over {limit} (a decompression bomb?)"
        ) from None
    except UnidentifiedImageError:
        raise InputError(f"{source}: not a readable image (no image format recognised: not PNG data?)") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{source}: not a readable image ({err})") from None
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3):
        return arr
    raise InputError(
        f"{source}: a {what} must be single-channel indices or RGB colours, got shape {arr.shape} ({mode})"
    )


def read_png(path: Path | str, what: str) -> np.ndarray:
    """A PNG file's raw values (:func:`decode_png`)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: {what} not found")
    return decode_png(path.read_bytes(), what, str(path), png_only=False)


def snap_colors(synth, rgb: np.ndarray) -> np.ndarray:
    """RGB [H, W, 3] -> each colour replaced by the nearest class colour of the model's palette."""
    if synth.classes is None:
        raise InputError("this generator file records no class table, so colour-coded maps cannot be read")
    colors = np.asarray(synth.classes.colors, dtype=np.int64)
    uniq, inverse = np.unique(rgb.reshape(-1, 3).astype(np.int64), axis=0, return_inverse=True)
    nearest = np.argmin(((uniq[:, None, :] - colors[None]) ** 2).sum(-1), axis=1)
    return colors[nearest][inverse.reshape(-1)].reshape(rgb.shape).astype(np.uint8)


def label_indices(synth, label: np.ndarray, source: str, snap: bool = False) -> np.ndarray:
    """A decoded label map -> class indices [H, W]: colours through the palette (``snap``: nearest class)."""
    if label.ndim == 2:
        return label.astype(np.int64)
    try:
        return synth.labels_from_colors(snap_colors(synth, label) if snap else label)
    except InputError as err:
        raise type(err)(f"{source}: {err}") from None


def style_image(data: bytes, source: str, max_pixels: int | None = None) -> np.ndarray:
    """A style photo (PNG, JPEG or any format Pillow reads; any mode: grey, palette, 16-bit, CMYK)
    -> uint8 [H, W, 3], as Pillow converts it to RGB."""
    return decode_png(data, "style image", source, png_only=False, max_pixels=max_pixels, rgb=True)


@dataclass
class Samples:
    images: np.ndarray  # uint8 [n, H, W, 3]
    seed: int | None  # the seed of image 0 (image k: seed + k); None for models without style noise


def render(synth, labels: np.ndarray, instance=None, style=None, seed: int | None = None, n: int = 1) -> Samples:
    """``n`` images of one label map [H, W] (class indices): styles seed, seed + 1, ... (a random seed when None)."""
    cfg = synth.config
    if n < 1:
        raise InputError(f"the number of samples must be at least 1, got {n}")
    if n > 1 and not cfg.use_vae:
        raise InputError(
            f"{n} samples asked, but this model has no style noise (use_vae off): every sample would be "
            "the same image; ask for 1"
        )
    if instance is not None and instance.shape != labels.shape:
        raise InputError(f"the instance map {instance.shape} and the label map {labels.shape} differ in size")
    if cfg.use_vae and seed is None:
        seed = random.randint(0, MAX_SEED - 16)
    if not cfg.use_vae:
        seed = None
    batch = np.repeat(labels[None].astype(np.int64), n, axis=0)
    inst = None
    if cfg.use_instance:  # none given: the label map stands in (edges at class boundaries only)
        inst = np.repeat((labels if instance is None else instance)[None].astype(np.int64), n, axis=0)
    # one image per forward: image k is then the very image that seed + k gives alone (batched
    # convolutions may round differently)
    images = synth.synthesize(batch, inst, style_images=style, seed=seed, batch_size=1)
    return Samples(images, seed)


def synthesize(
    model: str,
    label_path: Path | str,
    out_path: Path | str,
    instance_path: Path | str | None = None,
    seed: int | None = None,
    tracking_uri: str | None = None,
    style_path: Path | str | None = None,
    n_samples: int = 1,
) -> Path:
    """Write the image generated from one label map (PNG, written atomically); returns ``out_path``.

    ``tracking_uri``: where registered models live; default ``MLFLOW_TRACKING_URI``, else
    ``sqlite:///<cwd>/mlflow.db``. Models trained with instance maps use ``instance_path``; without
    one, the label map stands in for it (edges at class boundaries only). With ``n_samples`` > 1
    the images go to ``<out stem>-<k>.png`` and the first is returned.
    """
    return synthesize_many(model, label_path, out_path, instance_path, seed, tracking_uri, style_path, n_samples)[0]


def synthesize_many(
    model: str,
    label_path: Path | str,
    out_path: Path | str,
    instance_path: Path | str | None = None,
    seed: int | None = None,
    tracking_uri: str | None = None,
    style_path: Path | str | None = None,
    n_samples: int = 1,
) -> list[Path]:
    """One label map PNG -> ``out_path``; a folder of them -> the folder ``out_path`` (same names;
    instance maps from the folder ``instance_path`` by name); returns the images written."""
    label_path, out_path = Path(label_path), Path(out_path)
    jobs = _jobs(label_path, out_path, Path(instance_path) if instance_path else None)
    if style_path and not Path(style_path).is_file():
        raise MissingInputError(f"{style_path}: style image not found")
    style = style_image(Path(style_path).read_bytes(), str(style_path)) if style_path else None
    synth = load_model(model, tracking_uri)
    written = []
    for label_file, inst_file, out_file in jobs:
        labels = label_indices(synth, read_png(label_file, "label map"), str(label_file))
        instance = read_png(inst_file, "instance map") if inst_file else None
        if instance is not None and instance.ndim != 2:
            raise InputError(f"{inst_file}: an instance map must have one channel of ids, got shape {instance.shape}")
        if instance is not None and instance.shape != labels.shape:
            raise InputError(f"{inst_file}: instance map {instance.shape} and label map {labels.shape} differ in size")
        images = render(synth, labels, instance, style, seed, n_samples).images
        names = (
            [out_file] if n_samples == 1 else [out_file.with_name(f"{out_file.stem}-{k}.png") for k in range(n_samples)]
        )
        written += [write_png(name, image) for name, image in zip(names, images, strict=True)]
    return written


def _jobs(label_path: Path, out_path: Path, instance_path: Path | None) -> list[tuple[Path, Path | None, Path]]:
    """(label map, instance map or None, output) for a file or for every PNG of a folder."""
    if not label_path.is_dir():
        if not label_path.is_file():
            raise MissingInputError(f"{label_path}: label map not found")
        return [(label_path, instance_path, out_path)]
    labels = sorted(p for p in label_path.iterdir() if p.suffix.lower() == ".png")
    if not labels:
        raise MissingInputError(f"{label_path}: no label map PNGs in the folder")
    if out_path.suffix.lower() == ".png":
        raise InputError(f"{out_path}: with a folder of label maps, --out must be a folder, not a PNG")
    jobs: list[tuple[Path, Path | None, Path]] = []
    for label in labels:
        inst = None
        if instance_path is not None:
            inst = instance_path / label.name
            if not inst.is_file():
                raise MissingInputError(f"{inst}: no instance map for {label.name} in {instance_path}")
        jobs.append((label, inst, out_path / label.name))
    return jobs
