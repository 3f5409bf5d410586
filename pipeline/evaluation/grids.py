"""Sample grids: one row per validation sample, colourised label | generated | real."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DONTCARE = 255


def palette(classes: dict) -> np.ndarray:
    """``[256, 3]`` uint8 colours from classes.json (dontcare and unknown values are black)."""
    table = np.zeros((max(256, int(classes.get("label_nc", 0)) + 1), 3), dtype=np.uint8)
    for entry in classes.get("classes", []):
        color = entry.get("color")
        if color is not None:
            table[int(entry["index"])] = np.asarray(color[:3], dtype=np.uint8)
    table[DONTCARE] = 0
    return table


def colorize_labels(labels: np.ndarray, classes: dict) -> np.ndarray:
    """Class-index map(s) ``[...,H,W]`` -> RGB ``[...,H,W,3]`` uint8."""
    table = palette(classes)
    idx = np.clip(np.asarray(labels, dtype=np.int64), 0, len(table) - 1)
    return table[idx]


def sample_grid(labels: np.ndarray, fakes: np.ndarray, reals: np.ndarray, classes: dict, gap: int = 2) -> np.ndarray:
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
    colored = colorize_labels(labels, classes)
    grid = np.full((n * h + (n - 1) * gap, 3 * w + 2 * gap, 3), 255, dtype=np.uint8)
    for i in range(n):
        y = i * (h + gap)
        for j, panel in enumerate((colored[i], fakes[i], reals[i])):
            x = j * (w + gap)
            grid[y : y + h, x : x + w] = panel
    return grid


def write_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    from pipeline.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
    return path
