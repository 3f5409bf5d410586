"""The demo dataset: procedurally generated landscapes, deterministic from a seed.

Sky with a gradient and clouds, mountains with snow caps, a lake with reflections and a sandy
shore, textured grass, a road, trees, rocks and houses, under a per-image sun (brightness and
warmth). Each tree, rock, cloud and house is its own instance; each stuff class region is one
instance too, so edges also mark stuff boundaries. The class colours are strong and consistent,
so a small GAN learns the mapping in minutes on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = [  # name, display colour (for label visualisation, not the rendered texture)
    ("sky", (110, 170, 235)),
    ("cloud", (245, 245, 250)),
    ("mountain", (120, 105, 95)),
    ("snow", (230, 235, 245)),
    ("water", (40, 90, 170)),
    ("grass", (80, 160, 60)),
    ("tree", (25, 90, 35)),
    ("rock", (130, 130, 135)),
    ("sand", (215, 195, 140)),
    ("road", (90, 85, 80)),
    ("house", (180, 80, 60)),
    ("flowers", (230, 120, 180)),
]
NAMES = [c[0] for c in CLASSES]
IDX = {name: i for i, name in enumerate(NAMES)}
THING_CLASSES = {"cloud", "tree", "rock", "house"}


def class_table() -> dict:
    return {
        "format_version": 1,
        "dataset": "demo",
        "label_nc": len(CLASSES),
        "dontcare": 255,
        "contain_dontcare_label": True,
        "has_instances": True,
        "classes": [{"index": i, "name": n, "color": list(c)} for i, (n, c) in enumerate(CLASSES)],
    }


def _noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: a coarse random grid, bilinearly upsampled."""
    gh, gw = max(2, h // scale + 2), max(2, w // scale + 2)
    grid = rng.random((gh, gw)).astype(np.float32)
    ys = np.linspace(0, gh - 1.001, h)
    xs = np.linspace(0, gw - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx


def generate_sample(seed: int, index: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 [H,W,3], label uint8 [H,W], instance uint16 [H,W]) for one sample."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, index, 0xDE30])
    h, w = height, width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yn, xn = yy / h, xx / w
    label = np.full((h, w), IDX["sky"], np.uint8)
    things = np.zeros((h, w), np.uint16)
    next_id = 100

    horizon = rng.uniform(0.38, 0.62)
    # mountains: a ridge of summed sines above the horizon
    ridge = horizon - rng.uniform(0.08, 0.25) * (
        0.6 + 0.4 * np.sin(xn * rng.uniform(4, 9) + rng.uniform(0, 6))
        * np.sin(xn * rng.uniform(9, 17) + rng.uniform(0, 6))
    )
    has_mountains = rng.random() < 0.8
    if has_mountains:
        mountain = yn >= ridge[None, :] if ridge.ndim == 1 else yn >= ridge
        mountain &= yn < horizon
        label[mountain] = IDX["mountain"]
        snow_line = ridge + rng.uniform(0.012, 0.035)
        label[mountain & (yn < snow_line)] = IDX["snow"]
    # ground below the horizon: a lake (sometimes), sand shore, grass
    has_lake = rng.random() < 0.6
    shore = horizon + (rng.uniform(0.1, 0.25) if has_lake else 0.0)
    shore_line = shore + 0.03 * np.sin(xn * rng.uniform(5, 12) + rng.uniform(0, 6))
    ground = yn >= horizon
    label[ground] = IDX["grass"]
    if has_lake:
        label[ground & (yn < shore_line)] = IDX["water"]
        label[(yn >= shore_line) & (yn < shore_line + rng.uniform(0.03, 0.07))] = IDX["sand"]
    # a road winding towards the horizon
    if rng.random() < 0.5:
        centre = rng.uniform(0.3, 0.7) + 0.15 * np.sin(yn * rng.uniform(3, 7))
        half = 0.02 + 0.12 * (yn - shore) / max(1e-3, 1 - shore)
        road = (np.abs(xn - centre) < half) & (yn > shore_line + 0.08)
        label[road] = IDX["road"]
    # flower patches on grass
    patches = (_noise(rng, h, w, max(4, w // 6)) > 0.78) & (label == IDX["grass"])
    label[patches] = IDX["flowers"]

    def paint(mask: np.ndarray, cls: str) -> None:
        nonlocal next_id
        if mask.any():
            label[mask] = IDX[cls]
            things[mask] = next_id
            next_id += 1

    # clouds: soft ellipses in the sky
    for _ in range(rng.integers(0, 4)):
        cx, cy = rng.uniform(0, 1), rng.uniform(0.03, horizon - 0.12)
        rx, ry = rng.uniform(0.08, 0.2), rng.uniform(0.03, 0.06)
        paint((((xn - cx) / rx) ** 2 + ((yn - cy) / ry) ** 2 < 1) & (label == IDX["sky"]), "cloud")
    # houses on the grass
    for _ in range(rng.integers(0, 2) if shore < 0.7 else 0):
        bx, by = rng.uniform(0.1, 0.8), rng.uniform(shore + 0.12, 0.85)
        bw, bh = rng.uniform(0.1, 0.18), rng.uniform(0.08, 0.14)
        body = (xn > bx) & (xn < bx + bw) & (yn > by - bh) & (yn < by)
        roof = (yn <= by - bh) & (yn > by - bh - 0.5 * bw + np.abs(xn - bx - bw / 2)) & (xn > bx) & (xn < bx + bw)
        paint(body | roof, "house")
    # trees: a canopy ellipse on a short trunk; nearer (lower) trees are bigger, painted last
    ys_trees = np.sort(rng.uniform(horizon + 0.02, 0.98, rng.integers(2, 7)))
    for ty in ys_trees:
        tx = rng.uniform(0, 1)
        size = 0.04 + 0.1 * (ty - horizon) / (1 - horizon)
        canopy = ((xn - tx) / (size * 0.7)) ** 2 + ((yn - (ty - size * 1.2)) / size) ** 2 < 1
        trunk = (np.abs(xn - tx) < size * 0.12) & (yn > ty - size * 0.6) & (yn < ty)
        paint(canopy | trunk, "tree")
    # rocks
    for _ in range(rng.integers(0, 4)):
        rx0, ry0 = rng.uniform(0, 1), rng.uniform(horizon + 0.05, 1.0)
        r = rng.uniform(0.02, 0.05)
        paint(((xn - rx0) / (1.4 * r)) ** 2 + ((yn - ry0) / r) ** 2 < 1, "rock")

    image = _render(rng, label, yn, xn, horizon, has_lake, h, w)
    instance = np.where(things > 0, things, label.astype(np.uint16) + 1).astype(np.uint16)
    return image, label, instance


def _render(rng, label, yn, xn, horizon, has_lake, h, w) -> np.ndarray:
    sun = rng.uniform(0.75, 1.15)  # overall brightness
    warmth = rng.uniform(-0.08, 0.12)  # evening light is warmer
    fine = _noise(rng, h, w, 3)
    coarse = _noise(rng, h, w, max(4, w // 8))
    img = np.zeros((h, w, 3), np.float32)

    def fill(cls: str, rgb, texture: float = 0.0, noise=None):
        mask = label == IDX[cls]
        if mask.any():
            base = np.asarray(rgb, np.float32)[None, :]
            n = (fine if noise is None else noise)[mask][:, None] - 0.5
            img[mask] = base * (1 + texture * n)

    t = np.clip(yn / max(horizon, 1e-3), 0, 1)[..., None]
    sky_top, sky_low = np.array([60, 120, 215], np.float32), np.array([175, 210, 245], np.float32)
    sky = sky_top * (1 - t) + sky_low * t
    img[:] = sky
    fill("cloud", (245, 246, 250), 0.1, coarse)
    fill("mountain", (115, 100, 92), 0.5, coarse)
    fill("snow", (236, 240, 248), 0.08)
    fill("grass", (78, 150, 55), 0.55, fine * 0.6 + coarse * 0.4)
    fill("flowers", (225, 110, 170), 0.6)
    fill("sand", (218, 196, 140), 0.25)
    fill("road", (92, 88, 84), 0.2)
    fill("tree", (28, 92, 36), 0.7)
    fill("rock", (128, 128, 132), 0.45, coarse)
    fill("house", (178, 82, 60), 0.15)
    water = label == IDX["water"]
    if has_lake and water.any():
        # the water reflects the sky, darker and bluer, with ripples
        ripple = 0.85 + 0.15 * np.sin(yn * h * 1.7 + fine * 6)
        refl = (sky * np.array([0.45, 0.6, 0.85], np.float32)) * ripple[..., None]
        img[water] = refl[water] + np.array([5, 25, 45], np.float32)
    # lighting: brightness, warmth, and a soft vertical falloff on the ground
    img *= sun
    img[..., 0] *= 1 + warmth
    img[..., 2] *= 1 - warmth
    ground = yn > horizon
    img[ground] *= (1.0 - 0.15 * (1 - yn[ground]))[:, None]
    img += rng.normal(0, 2.0, img.shape).astype(np.float32)  # sensor noise
    return np.clip(img, 0, 255).astype(np.uint8)


def write_demo_source(out_dir: Path | str, settings) -> Path:
    """Write the demo samples as a ``folder``-format source (see ``pipeline.ingest.folder``)."""
    import json

    out = Path(out_dir)
    for split, count, offset in (("train", settings.num_train, 0), ("val", settings.num_val, 1_000_000)):
        for sub in ("images", "labels", "instances"):
            (out / sub / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label, instance = generate_sample(settings.seed, offset + i, settings.width, settings.height)
            name = f"demo_{split}_{i:06d}"
            Image.fromarray(image).save(out / "images" / split / f"{name}.png")
            Image.fromarray(label).save(out / "labels" / split / f"{name}.png")
            Image.fromarray(instance).save(out / "instances" / split / f"{name}.png")
    table = class_table()
    (out / "classes.json").write_text(json.dumps({"dataset": "demo", "classes": table["classes"]}, indent=2))
    return out
