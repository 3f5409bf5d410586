"""The compare report's charts (matplotlib, no display): per-class IoU differences and loss curves."""

from __future__ import annotations

import math
from pathlib import Path

from pipeline.io import atomic_path

LOSS_KEYS = ("G_GAN", "G_GAN_Feat", "G_VGG", "KLD", "D_Fake", "D_real")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def iou_differences(per_class_a: list[dict], per_class_b: list[dict]) -> list[tuple[str, float, float]]:
    """(class name, IoU of A, IoU of B) for the classes both runs scored, by B - A."""
    a = {r["name"]: float(r["iou_generated"]) for r in per_class_a if r.get("iou_generated")}
    b = {r["name"]: float(r["iou_generated"]) for r in per_class_b if r.get("iou_generated")}
    rows = [(name, a[name], b[name]) for name in a if name in b]
    return sorted(rows, key=lambda r: r[2] - r[1])


def iou_difference_chart(rows: list[tuple[str, float, float]], label_a: str, label_b: str, path: Path) -> Path:
    """Horizontal bars of IoU(B) - IoU(A) per class: right (green) where B is better."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, max(2.0, 0.28 * len(rows) + 1)))
    diffs = [b - a for _, a, b in rows]
    ax.barh([r[0] for r in rows], diffs, color=["#2a9d4b" if d >= 0 else "#d1495b" for d in diffs])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"IoU of {label_b} minus IoU of {label_a} (generated images)")
    ax.set_title("per-class IoU difference")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def loss_chart(losses_a: list[dict], losses_b: list[dict], label_a: str, label_b: str, path: Path) -> Path:
    """One panel per loss, both runs' curves over training steps."""
    plt = _pyplot()
    keys = [k for k in LOSS_KEYS if any(r.get(k) for r in losses_a + losses_b)]
    cols = 3
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for losses, label, style in ((losses_a, label_a, "-"), (losses_b, label_b, "--")):
            points = [(int(r["step"]), float(r[key])) for r in losses if r.get(key)]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=label, linewidth=1.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)
