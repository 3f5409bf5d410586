"""Training and evaluation transforms: the same geometry for image, label map and instance map.

Resampling is the reference implementation's: images with PIL's bicubic filter (antialiased when
shrinking), label and instance maps with PIL's nearest neighbour (the source pixel under each
output pixel's centre), so label values stay class indices and maps stay aligned with images.

``Geometry.preprocess_mode`` follows the reference's ``--preprocess_mode``: how an image is resized
(``resize``: to load_size; ``scale_width``: width to load_size, the aspect kept; ``scale_shortside``:
the short side to load_size; ``fixed``: to the crop size; ``none``: sides rounded to multiples of
32; ``crop``: not at all) and whether a random crop follows (``*_and_crop``, ``crop``). Two
deliberate differences: crops and ``resize`` follow ``aspect_ratio`` (the reference crops squares
and resizes to load x load, which only fits the generator at aspect ratio 1), and
``scale_shortside`` scales the short side to load_size (the reference keeps the short side's
original length there, a slip that distorts the aspect).

Each call takes an explicit seed, so a sample's augmentation depends only on (run seed, epoch,
sample index): the same whatever the number of processes or loader workers, and a resumed run sees
the same crops as one that never stopped. Edges are computed after the transform, on the cropped
instance map, as the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from gaugan.choices import PREPROCESS_MODES
from gaugan.classes import DONTCARE
from gaugan.config import size_hw
from gaugan.edges import instance_edges
from gaugan.errors import ConfigError, InputError


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H,W,3]`` -> ``[h,w,3]``: PIL bicubic, antialiased when shrinking (the reference's)."""
    if image.shape[:2] == tuple(hw):
        return np.ascontiguousarray(image)
    return np.array(Image.fromarray(np.ascontiguousarray(image)).resize((hw[1], hw[0]), Image.Resampling.BICUBIC))


def resize_map(values: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Label or instance map ``[H,W]`` -> ``[h,w]`` (int64): PIL nearest, values kept exactly."""
    if values.shape[:2] == tuple(hw):
        return values.astype(np.int64, copy=False)
    as_int32 = Image.fromarray(np.ascontiguousarray(values, dtype=np.int32))  # mode "I"
    return np.array(as_int32.resize((hw[1], hw[0]), Image.Resampling.NEAREST), dtype=np.int64)


@dataclass(frozen=True)
class Geometry:
    """Resize (by ``preprocess_mode``), random crop of (crop_size / aspect_ratio, crop_size), optional flip."""

    load_size: int
    crop_size: int
    aspect_ratio: float = 1.0
    flip: bool = True
    preprocess_mode: str = "resize_and_crop"

    def __post_init__(self) -> None:
        if self.preprocess_mode not in PREPROCESS_MODES:
            raise ConfigError(f"preprocess_mode must be one of {PREPROCESS_MODES}, got {self.preprocess_mode!r}")

    @property
    def crop_hw(self) -> tuple[int, int]:
        return size_hw(self.crop_size, self.aspect_ratio)

    @property
    def cropped(self) -> bool:
        return "crop" in self.preprocess_mode

    def resized_hw(self, height: int, width: int) -> tuple[int, int]:
        """The size an image of (height, width) is resized to before cropping."""
        mode, load = self.preprocess_mode, self.load_size
        if mode == "resize_and_crop":
            return size_hw(load, self.aspect_ratio)
        if mode.startswith("scale_width"):
            return max(1, int(load * height / width)), load
        if mode.startswith("scale_shortside"):
            long_side = int(load * max(height, width) / min(height, width))
            return (load, long_side) if height <= width else (long_side, load)
        if mode == "fixed":
            return self.crop_hw
        if mode == "none":  # sides rounded to a multiple of 32, as the reference's make_power_2
            return max(32, round(height / 32) * 32), max(32, round(width / 32) * 32)
        return height, width  # crop


def _crop(array: np.ndarray, y0: int, x0: int, hw: tuple[int, int], fill: int) -> np.ndarray:
    """``array[y0:y0+h, x0:x0+w]``, padded with ``fill`` where the window leaves the array."""
    h, w = hw
    out = np.full((h, w, *array.shape[2:]), fill, dtype=array.dtype)
    part = array[y0 : y0 + h, x0 : x0 + w]
    out[: part.shape[0], : part.shape[1]] = part
    return out


class PairTransform:
    """Turns a prepared-dataset sample into model tensors.

    Output: ``image`` float [3,H,W] in [-1, 1], ``label`` int64 [H,W], and when instance maps are
    used, ``edge`` float [1,H,W] (1 on instance boundaries). ``uint8``: ``image`` uint8 [3,H,W] and
    ``edge`` uint8 (255 on boundaries), for the trainer to convert on its device. A crop window larger than the resized
    image is padded: black image, dontcare label, no instance (the reference pads with zeros, i.e.
    class 0; here padding is never trained as a class).
    """

    def __init__(self, geometry: Geometry, use_instance: bool, uint8: bool = False):
        self.geometry = geometry
        self.use_instance = use_instance
        self.uint8 = uint8  # image and edge stay uint8 (edge 0/255): a quarter of the bytes to the GPU

    def __call__(self, sample: dict, seed: int) -> dict:
        g, rng = self.geometry, np.random.default_rng(seed)
        instance = sample.get("instance")
        if self.use_instance and instance is None:
            raise InputError(f"sample {sample.get('id')!r} has no instance map but the model uses instances")
        size = g.resized_hw(*sample["image"].shape[:2])
        image, label = resize_image(sample["image"], size), resize_map(sample["label"], size)
        instance = resize_map(instance, size) if instance is not None and self.use_instance else None
        if g.cropped:
            ch, cw = g.crop_hw
            y0, x0 = int(rng.integers(0, max(0, size[0] - ch) + 1)), int(rng.integers(0, max(0, size[1] - cw) + 1))
            image, label = _crop(image, y0, x0, (ch, cw), 0), _crop(label, y0, x0, (ch, cw), DONTCARE)
            instance = _crop(instance, y0, x0, (ch, cw), 0) if instance is not None else None
        if g.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
            instance = instance[:, ::-1] if instance is not None else None
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        tensor = tensor.contiguous() if self.uint8 else tensor.float().div_(127.5).sub_(1.0)
        result = {"id": sample["id"], "image": tensor, "label": torch.from_numpy(np.ascontiguousarray(label))}
        if instance is not None:
            edge = instance_edges(np.ascontiguousarray(instance))
            edge_t = torch.from_numpy(edge).unsqueeze(0)
            result["edge"] = edge_t if self.uint8 else edge_t.float().div_(255.0)
        return result
