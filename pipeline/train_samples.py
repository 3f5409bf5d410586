"""Sample grids during training: label | generated | real on a fixed set of validation maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gaugan.config import GauGANConfig
from gaugan.data import ClassTable, PreparedDataset, colorize
from gaugan.synthesizer import to_uint8
from gaugan.transforms import Geometry, PairTransform
from pipeline.io import atomic_path


def label_grid(labels: np.ndarray, fakes: np.ndarray, reals: np.ndarray, classes: ClassTable) -> np.ndarray:
    """Rows of [colorized label | generated | real]; arrays are [N,H,W] and [N,H,W,3] uint8."""
    rows = [
        np.concatenate([colorize(lab, classes), fake, real], axis=1) for lab, fake, real in zip(labels, fakes, reals)
    ]
    return np.concatenate(rows, axis=0)


class SampleMaker:
    def __init__(
        self, data_root: Path, classes: ClassTable, config: GauGANConfig, train_settings, seed: int, count: int = 6
    ):
        self.classes = classes
        self.config = config
        val = PreparedDataset(data_root, "val", load_instances=config.use_instance)
        geometry = Geometry(
            train_settings.crop_size, train_settings.crop_size, train_settings.aspect_ratio, flip=False, train=False
        )
        transform = PairTransform(geometry, config.use_instance)
        picked = [transform(val[i], seed) for i in range(min(count, len(val)))]
        self.label = torch.stack([p["label"] for p in picked])
        self.image = torch.stack([p["image"] for p in picked])
        self.edge = torch.stack([p["edge"] for p in picked]) if config.use_instance else None
        self.seed = seed

    @torch.no_grad()
    def write(self, generator_and_encoder, path: Path) -> Path:
        from gaugan.encoding import encode_labels

        netG = generator_and_encoder[0] if isinstance(generator_and_encoder, tuple) else generator_and_encoder
        device = next(netG.parameters()).device
        semantics = encode_labels(
            self.label.to(device),
            self.config.label_nc,
            self.config.contain_dontcare_label,
            self.edge.to(device) if self.edge is not None else None,
        )
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        z = torch.randn(len(self.label), self.config.z_dim, generator=gen).to(device) if self.config.use_vae else None
        fake = netG(semantics, z=z) if self.config.use_vae else netG(semantics)
        grid = label_grid(self.label.numpy(), to_uint8(fake), to_uint8(self.image), self.classes)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
        return path
