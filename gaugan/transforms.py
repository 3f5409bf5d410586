"""Training and evaluation transforms: the same geometry for image, label map and instance map.

Maps are only ever resized with NEAREST, so label values stay class indices. Each call takes an
explicit seed, so a sample's augmentation depends only on (run seed, epoch, sample index): the
result is the same whatever the number of processes or loader workers, and a resumed run sees the
same crops as one that never stopped. Edges are computed after the transform, on the cropped
instance map, as the reference implementation does.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from gaugan.config import size_hw
from gaugan.edges import instance_edges
from gaugan.errors import InputError


def _albumentations():
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H,W,3]`` -> ``[h,w,3]``, bicubic (cv2, as the training transforms)."""
    if image.shape[:2] == tuple(hw):
        return np.ascontiguousarray(image)
    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)


def resize_map(values: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Label or instance map ``[H,W]`` -> ``[h,w]``, nearest, values kept (int64 out)."""
    if values.shape[:2] == tuple(hw):
        return values.astype(np.int64, copy=False)
    out = cv2.resize(values.astype(np.int32), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return out.astype(np.int64)


@dataclass(frozen=True)
class Geometry:
    """Resize to load size, random crop, optional flip. Height = width / aspect_ratio."""

    load_size: int
    crop_size: int
    aspect_ratio: float = 1.0
    flip: bool = True
    train: bool = True

    @property
    def crop_hw(self) -> tuple[int, int]:
        return size_hw(self.crop_size, self.aspect_ratio)

    @property
    def load_hw(self) -> tuple[int, int]:
        return size_hw(self.load_size, self.aspect_ratio)


class PairTransform:
    """Turns a prepared-dataset sample into model tensors.

    Output: ``image`` float [3,H,W] in [-1, 1], ``label`` int64 [H,W], and when instance maps are
    used, ``edge`` float [1,H,W] (1 on instance boundaries).
    """

    def __init__(self, geometry: Geometry, use_instance: bool):
        A = _albumentations()
        self.geometry = geometry
        self.use_instance = use_instance
        ch, cw = geometry.crop_hw
        if geometry.train:
            lh, lw = geometry.load_hw
            ops = [
                A.Resize(lh, lw, interpolation=cv2.INTER_CUBIC, mask_interpolation=cv2.INTER_NEAREST),
                A.RandomCrop(ch, cw),
            ]
            if geometry.flip:
                ops.append(A.HorizontalFlip(p=0.5))
        else:
            ops = [A.Resize(ch, cw, interpolation=cv2.INTER_CUBIC, mask_interpolation=cv2.INTER_NEAREST)]
        self.compose = A.Compose(ops, additional_targets={"instance": "mask"}, seed=0)

    def __call__(self, sample: dict, seed: int) -> dict:
        self.compose.set_random_seed(seed)
        inputs = {"image": sample["image"], "mask": sample["label"].astype(np.int32)}
        instance = sample.get("instance")
        if self.use_instance:
            if instance is None:
                raise InputError(f"sample {sample.get('id')!r} has no instance map but the model uses instances")
            inputs["instance"] = instance.astype(np.int32)
        out = self.compose(**inputs)
        image = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        result = {"id": sample["id"], "image": image, "label": torch.from_numpy(out["mask"].astype(np.int64))}
        if self.use_instance:
            edge = instance_edges(out["instance"])
            result["edge"] = torch.from_numpy(edge).float().div_(255.0).unsqueeze(0)
        return result
