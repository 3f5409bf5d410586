"""Sample grids: one row per sample, colour-coded label | generated | real, written as PNG.

The train stage draws them during training and the evaluate stage on the validation split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gaugan.classes import ClassTable
from pipeline.io import atomic_path


def sample_grid(
    labels: np.ndarray, fakes: np.ndarray, reals: np.ndarray, classes: ClassTable, gap: int = 2
) -> np.ndarray:
    """Rows of [label | generated | real] with white ``gap``-pixel separators.

    ``labels`` int ``[N,H,W]``; ``fakes``/``reals`` uint8 ``[N,H,W,3]``; returns uint8 ``[rows,cols,3]``.
    """
    labels, fakes, reals = np.asarray(labels), np.asarray(fakes), np.asarray(reals)
    if not (len(labels) == len(fakes) == len(reals)) or len(labels) == 0:
        raise ValueError(
            f"need the same non-zero number of labels, fakes and reals, got {len(labels)}, {len(fakes)}, {len(reals)}"
        )
    if fakes.shape != reals.shape or fakes.shape[1:3] != labels.shape[1:3]:
        raise ValueError(f"shapes differ: labels {labels.shape}, generated {fakes.shape}, real {reals.shape}")
    n, h, w = labels.shape
    colored = classes.colorize(labels)
    grid = np.full((n * h + (n - 1) * gap, 3 * w + 2 * gap, 3), 255, dtype=np.uint8)
    for i in range(n):
        y = i * (h + gap)
        for j, panel in enumerate((colored[i], fakes[i], reals[i])):
            x = j * (w + gap)
            grid[y : y + h, x : x + w] = panel
    return grid


def write_png(path: Path, image: np.ndarray) -> Path:
    """An RGB uint8 array as a PNG file, written atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
    return path
