"""Sample grids during training: label | generated | real on a fixed set of validation maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gaugan.classes import ClassTable
from gaugan.config import size_hw
from gaugan.data import PreparedDataset
from gaugan.synthesizer import Synthesizer
from gaugan.transforms import resize_image, resize_map
from pipeline.evaluation.grids import sample_grid, write_png


class SampleMaker:
    """The first ``count`` validation samples at the training crop size; ``write`` draws the grid."""

    def __init__(
        self,
        data_root: Path,
        classes: ClassTable,
        crop_size: int,
        aspect_ratio: float,
        use_instance: bool,
        seed: int,
        count: int = 6,
    ):
        hw = size_hw(crop_size, aspect_ratio)
        val = PreparedDataset(data_root, "val", load_instances=use_instance)
        picked = [val[i] for i in range(min(count, len(val)))]
        self.classes = classes
        self.labels = np.stack([resize_map(p["label"], hw) for p in picked])
        self.reals = np.stack([resize_image(p["image"], hw) for p in picked])
        self.instances = np.stack([resize_map(p["instance"], hw) for p in picked]) if use_instance else None
        self.seed = seed

    def write(self, synth: Synthesizer, path: Path) -> Path:
        fakes = synth.synthesize(self.labels, self.instances, seed=self.seed)
        return write_png(path, sample_grid(self.labels, fakes, self.reals, self.classes))
