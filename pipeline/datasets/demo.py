"""The demo dataset: procedurally generated landscapes, deterministic from (seed, index, size).

A scene: a sky gradient (day to golden hour) with a sun glow and puffy clouds; one or two mountain
ranges with facet shading, haze on the far one and snow on the peaks above a snow line; a lake
that mirrors the sky and mountains with ripples, a sandy shore, textured grass with flower
patches, a winding road in perspective; then trees (round or conifer, with trunks and shading),
rocks and houses (walls, roof, windows), bigger when nearer, with cast shadows. Lighting (sun
side, brightness, warmth) and sensor noise vary per image.

Each cloud, mountain range, tree, rock and house is its own instance (ids 1..n in paint order,
later objects cover earlier ones); the other pixels get one id per class after those (as the
``per_class`` instance background of the real datasets), so edges mark both.

Class colours are strong and consistent (blue sky, green grass, blue water ...), so a small GAN
learns the mapping in minutes on a CPU; the layout, lighting and textures vary enough to make it a
real learning problem. Generation is vectorised NumPy: a few ms per 64x64 sample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from gaugan.classes import ClassTable

CLASSES = [  # name, display colour (for label visualisation; the rendered textures vary around it)
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
GENERATOR_VERSION = "landscape/2"  # part of every sample's hash: bump when the pictures change
VAL_OFFSET = 1_000_000  # val samples use indices from here, so the splits never share a scene


def class_table() -> ClassTable:
    from pipeline.datasets.common import class_table as table

    entries = [{"index": i, "name": n, "color": list(c)} for i, (n, c) in enumerate(CLASSES)]
    return table("demo", entries, has_instances=True)


# --- noise ----------------------------------------------------------------------------------


def _noise(rng: np.random.Generator, h: int, w: int, cells_y: float, cells_x: float) -> np.ndarray:
    """Smooth value noise in [0, 1]: a random grid of about cells_y x cells_x cells, bilinear."""
    gh, gw = int(cells_y) + 2, int(cells_x) + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    ys = np.linspace(0, cells_y, h, dtype=np.float32)
    xs = np.linspace(0, cells_x, w, dtype=np.float32)
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _profile(rng: np.random.Generator, x: np.ndarray, points: int, lo: float, hi: float) -> np.ndarray:
    """A random piecewise-linear 1-D profile over x in [0, 1] (sharp peaks: mountain ridges)."""
    cx = np.linspace(-0.1, 1.1, points) + rng.uniform(-0.3, 0.3, points) * (1.2 / points)
    return np.interp(x, np.sort(cx), rng.uniform(lo, hi, points)).astype(np.float32)


# --- the scene ------------------------------------------------------------------------------


class _Scene:
    """Label, instance and image canvases for one sample, painted back to front."""

    def __init__(self, rng: np.random.Generator, h: int, w: int):
        self.rng, self.h, self.w = rng, h, w
        self.y = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]  # [H,1] in (0, 1)
        self.x = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :]  # [1,W]
        self.label = np.full((h, w), IDX["sky"], np.uint8)
        self.things = np.zeros((h, w), np.uint16)
        self.img = np.zeros((h, w, 3), np.float32)
        self.next_id = 1
        self.fine = _noise(rng, h, w, h / 2.0, w / 2.0)  # pixel-scale grain
        self.mid = _noise(rng, h, w, 10, 10)
        self.coarse = _noise(rng, h, w, 4, 4)
        self.root = self  # views share the root's id counter

    def view(self, x0: float, x1: float, y0: float, y1: float) -> _Scene:
        """The same scene restricted to the box [x0, x1] x [y0, y1] (normalised, clipped, 1 px margin):
        views of the canvases, so an object costs its own area, not the frame's."""
        r0, r1 = max(0, int(np.floor(y0 * self.h)) - 1), min(self.h, int(np.ceil(y1 * self.h)) + 1)
        c0, c1 = max(0, int(np.floor(x0 * self.w)) - 1), min(self.w, int(np.ceil(x1 * self.w)) + 1)
        r1, c1 = max(r0, r1), max(c0, c1)
        v = object.__new__(_Scene)
        v.root, v.rng, v.h, v.w = self.root, self.rng, r1 - r0, c1 - c0
        v.y, v.x = self.y[r0:r1], self.x[:, c0:c1]
        for name in ("label", "things", "img", "fine", "mid", "coarse"):
            setattr(v, name, getattr(self, name)[r0:r1, c0:c1])
        return v

    def paint(self, mask: np.ndarray, cls: str, color: np.ndarray, thing: bool = True) -> np.ndarray:
        """Set label (+ a new instance id) and pixel colours ([N,3] or [3]) where ``mask``."""
        mask = np.broadcast_to(mask, (self.h, self.w))
        if mask.any():
            self.label[mask] = IDX[cls]
            if thing:
                self.things[mask] = self.root.next_id
                self.root.next_id += 1
            else:
                self.things[mask] = 0
            self.img[mask] = color if np.ndim(color) == 1 else color[mask]
        return mask


def _rgb(*v) -> np.ndarray:
    return np.asarray(v, np.float32)


@dataclass(frozen=True)
class _Light:
    horizon: float  # the horizon's height, as a fraction of the image from the top
    golden: float  # 0 = midday, 1 = golden hour
    sun_x: float
    sun_y: float
    sun_dir: float  # light comes from the right (+1) or the left (-1)


def generate_sample(seed: int, index: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 [H,W,3], label uint8 [H,W], instance uint16 [H,W]) of sample ``index``.

    The layers are painted back to front; every random draw comes from one generator seeded with
    (seed, index), in a fixed order, so a sample never changes.
    """
    from pipeline.datasets.common import background_segments

    rng = np.random.default_rng([seed & 0xFFFFFFFF, index & 0xFFFFFFFF, 0x5EED_DE30])
    s = _Scene(rng, height, width)
    horizon = rng.uniform(0.36, 0.6)
    golden = rng.uniform(0, 1) ** 2
    sun_x = rng.choice([rng.uniform(0.05, 0.35), rng.uniform(0.65, 0.95)])
    sun_y = horizon * rng.uniform(0.2, 0.8)
    light = _Light(horizon, golden, sun_x, sun_y, 1.0 if sun_x > 0.5 else -1.0)
    sky = _paint_sky(s, light)
    _paint_clouds(s, rng, light)
    _paint_mountains(s, rng, light, sky)
    grass, depth, shore = _paint_ground(s, rng, light)
    _paint_flowers(s, rng, grass)
    _paint_road(s, rng, light, depth, shore)
    _paint_objects(s, rng, light)
    return _finish(s, rng, light), s.label, background_segments(s.things, s.label)


def _paint_sky(s: _Scene, light: _Light) -> np.ndarray:
    """Zenith to horizon gradient, warmer near the horizon at golden hour, a glow around the sun."""
    y, x, golden = s.y, s.x, light.golden
    t = np.clip(y / light.horizon, 0, 1)[..., None]
    zenith = _rgb(55, 110, 205) * (1 - golden) + _rgb(70, 95, 170) * golden
    low = _rgb(170, 205, 240) * (1 - golden) + _rgb(250, 190, 140) * golden
    sky = zenith * (1 - t**1.5) + low * t**1.5
    glow = np.exp(-((x - light.sun_x) ** 2 + ((y - light.sun_y) * 1.6) ** 2) / 0.02)[..., None]
    sky = sky + glow * (_rgb(255, 240, 200) - sky) * 0.6
    s.img[:] = np.broadcast_to(sky, (s.h, s.w, 3))
    return sky


def _paint_clouds(s: _Scene, rng: np.random.Generator, light: _Light) -> None:
    """Unions of a few ellipses, lit from above."""
    y, x, h, w, golden = s.y, s.x, s.h, s.w, light.golden
    for _ in range(rng.integers(0, 4)):
        cx, cy = rng.uniform(-0.05, 1.05), rng.uniform(0.05, max(0.08, light.horizon - 0.15))
        blob = np.zeros((h, w), bool)
        span = rng.uniform(0.1, 0.25)
        for _ in range(rng.integers(3, 6)):
            ex = cx + rng.uniform(-span, span) * 0.6
            ey = cy + rng.uniform(-0.02, 0.015)
            rx, ry = rng.uniform(0.05, 0.11), rng.uniform(0.025, 0.05)
            blob |= ((x - ex) / rx) ** 2 + ((y - ey) / ry) ** 2 < 1
        blob &= s.label == IDX["sky"]
        shade = np.clip(1.02 - 4.0 * (y - cy + 0.03), 0.72, 1.02)[..., None] * (0.94 + 0.08 * s.mid[..., None])
        tint = _rgb(250, 250, 252) * (1 - golden) + _rgb(255, 215, 185) * golden
        s.paint(blob, "cloud", np.broadcast_to(tint * shade, (h, w, 3)))


def _paint_mountains(s: _Scene, rng: np.random.Generator, light: _Light, sky: np.ndarray) -> None:
    """Ranges far (hazy, bluish) then near; facet shading from the ridge slope; snow caps."""
    if rng.random() >= 0.85:
        return
    y, x, h, w, horizon = s.y, s.x, s.h, s.w, light.horizon
    ranges = 1 + int(rng.random() < 0.55)
    snow_line = horizon - rng.uniform(0.16, 0.3)
    for k in range(ranges):
        near = k == ranges - 1
        top, bottom = (
            (horizon - rng.uniform(0.12, 0.3), horizon - rng.uniform(0.02, 0.08))
            if near
            else (horizon - rng.uniform(0.2, 0.38), horizon - rng.uniform(0.05, 0.12))
        )
        ridge = _profile(rng, x[0], int(rng.integers(4, 9)), top, bottom)[None, :]
        ridge = ridge + 0.012 * (s.mid[:1, :] - 0.5)
        body = (y >= ridge) & (y < horizon)
        slope = np.gradient(ridge[0], x[0])[None, :]
        facet = np.clip(1.0 - 0.12 * light.sun_dir * np.sign(slope) * np.minimum(np.abs(slope), 3) / 3 * 2.5, 0.6, 1.3)
        base = _rgb(118, 100, 90) if near else _rgb(130, 135, 160)
        rock = base * (0.8 + 0.4 * s.coarse[..., None]) * (0.9 + 0.2 * s.fine[..., None]) * facet[..., None]
        depth = np.clip((y - ridge) / max(1e-3, horizon - float(ridge.min())), 0, 1)[..., None]
        rock = rock * (1.0 - 0.25 * depth)  # darker towards the foot
        if not near:
            rock = rock * 0.6 + sky * 0.4  # haze
        s.paint(body, "mountain", rock)
        snow = body & (y < snow_line + 0.03 * (s.mid - 0.5)) & (y < ridge + rng.uniform(0.04, 0.09))
        snow_col = _rgb(238, 242, 250) * facet[..., None] * (0.93 + 0.07 * s.fine[..., None])
        s.paint(snow, "snow", np.broadcast_to(snow_col, (h, w, 3)), thing=False)  # stuff: one id for all snow


def _paint_ground(s: _Scene, rng: np.random.Generator, light: _Light):
    """Grass everywhere below the horizon, then a lake with its shore; -> (grass colours, depth, shore)."""
    y, x, h, w, horizon, golden = s.y, s.x, s.h, s.w, light.horizon, light.golden
    ground = np.broadcast_to(y >= horizon, (h, w))
    depth = np.clip((y - horizon) / (1 - horizon), 0, 1)  # 0 at the horizon, 1 at the bottom
    grass_base = _rgb(70, 145, 50) * (1 - golden * 0.3) + _rgb(120, 140, 40) * golden * 0.3
    stripes = 0.5 + 0.5 * np.sin((x * 40 + s.mid * 6) * np.pi)
    grass = (
        grass_base
        * (0.7 + 0.35 * s.coarse[..., None] + 0.25 * (s.fine[..., None] - 0.5) + 0.06 * stripes[..., None])
        * (0.85 + 0.25 * depth[..., None])
    )
    s.paint(ground, "grass", grass, thing=False)
    shore = None
    if rng.random() < 0.6:
        shore = horizon + _profile(rng, x[0], 5, -0.08, rng.uniform(0.12, 0.3))[None, :]
        water = ground & (y < shore)
        if water.any():
            # mirror what is above the horizon, with horizontal ripples, darker and bluer
            rows = np.clip(np.round((2 * horizon - y) * h - 0.5), 0, h - 1).astype(np.int64)
            ripple = np.sin(y * h * 1.9 + s.fine * 4.0)
            cols = np.clip(np.round(x * w - 0.5 + 1.2 * ripple), 0, w - 1).astype(np.int64)
            mirrored = s.img[rows[:, :1].repeat(w, 1), cols]
            refl = mirrored * _rgb(0.55, 0.68, 0.85) + _rgb(8, 28, 55)
            refl = refl * (0.92 + 0.1 * ripple[..., None])
            s.paint(water, "water", refl, thing=False)
            beach = ground & (y >= shore) & (y < shore + rng.uniform(0.025, 0.06)) & (shore > horizon + 0.01)
            sand = _rgb(220, 198, 145) * (0.85 + 0.2 * s.fine[..., None] + 0.1 * s.mid[..., None])
            s.paint(beach, "sand", sand, thing=False)
    return grass, depth, shore


def _paint_flowers(s: _Scene, rng: np.random.Generator, grass: np.ndarray) -> None:
    """Patches on the grass, dotted pink and yellow."""
    patches = (s.coarse * 0.6 + s.mid * 0.4 > rng.uniform(0.62, 0.75)) & (s.label == IDX["grass"])
    dots = np.where((s.fine > 0.55)[..., None], _rgb(235, 95, 165), _rgb(245, 215, 70))
    flowers = np.where((s.fine > 0.35)[..., None] | (s.fine < 0.2)[..., None], dots, grass * 0.9)
    s.paint(patches, "flowers", flowers, thing=False)


def _paint_road(s: _Scene, rng: np.random.Generator, light: _Light, depth: np.ndarray, shore) -> None:
    """A road winding towards the horizon, wider when nearer, on dry ground."""
    if rng.random() >= 0.5:
        return
    y, x, horizon = s.y, s.x, light.horizon
    dry = (y >= horizon) & (s.label != IDX["water"])
    start = horizon + (0.03 if shore is None else float(np.max(shore)) - horizon + 0.05)
    centre = rng.uniform(0.3, 0.7) + rng.uniform(0.08, 0.18) * np.sin(y * rng.uniform(4, 9) + rng.uniform(0, 6))
    half = 0.01 + 0.13 * np.clip((y - start) / max(1e-3, 1 - start), 0, 1)
    road = dry & (np.abs(x - centre) < half) & (y > start)
    asphalt = _rgb(95, 92, 90) * (0.85 + 0.15 * s.fine[..., None]) * (0.85 + 0.2 * depth[..., None])
    dash = (np.abs(x - centre) < half * 0.06) & (np.sin(y * 70) > 0.2)
    asphalt = np.where(dash[..., None], _rgb(225, 220, 200), asphalt)
    s.paint(road, "road", asphalt, thing=False)


def _paint_objects(s: _Scene, rng: np.random.Generator, light: _Light) -> None:
    """Houses, trees and rocks on the ground, painted far to near, each with its cast shadow."""
    horizon = light.horizon
    objects = [
        ("house", rng.uniform(horizon + 0.08, 0.9)) for _ in range(rng.integers(0, 3) if rng.random() < 0.45 else 0)
    ]
    objects += [("tree", rng.uniform(horizon + 0.03, 1.02)) for _ in range(rng.integers(2, 9))]
    objects += [("rock", rng.uniform(horizon + 0.05, 1.0)) for _ in range(rng.integers(0, 4))]
    objects.sort(key=lambda o: o[1])
    for kind, base in objects:
        scale = 0.35 + 0.9 * (base - horizon) / (1 - horizon)  # perspective
        cx = rng.uniform(0.0, 1.0)
        if kind == "tree":
            _tree(s, rng, cx, base, scale, light.sun_dir, light.golden)
        elif kind == "rock":
            _rock(s, rng, cx, base, scale, light.sun_dir)
        else:
            _house(s, rng, cx, base, scale, light.sun_dir)


def _finish(s: _Scene, rng: np.random.Generator, light: _Light) -> np.ndarray:
    """Global light: brightness, warmth, a touch of vignetting and sensor noise; -> uint8 image."""
    img = s.img * rng.uniform(0.82, 1.12)
    warmth = 0.1 * light.golden + rng.uniform(-0.04, 0.04)
    img[..., 0] *= 1 + warmth
    img[..., 2] *= 1 - warmth
    img *= (1.0 - 0.18 * ((s.x - 0.5) ** 2 + (s.y - 0.5) ** 2))[..., None]
    img += rng.normal(0.0, 2.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _shadow(s: _Scene, cx: float, base: float, rx: float, ry: float, sun_dir: float) -> None:
    """Darken the ground (not objects) in an ellipse beside the base, away from the sun."""
    sx = cx - sun_dir * rx * 0.6
    s = s.view(sx - rx, sx + rx, base - ry, base + ry)
    m = (((s.x - sx) / rx) ** 2 + ((s.y - base) / ry) ** 2 < 1) & (s.things == 0)
    m &= s.label != IDX["sky"]
    s.img[m] *= 0.68


def _tree(s: _Scene, rng, cx: float, base: float, scale: float, sun_dir: float, golden: float) -> None:
    size = 0.07 * scale * rng.uniform(0.8, 1.25)
    _shadow(s, cx, base, size * 1.1, size * 0.25, sun_dir)
    trunk_h = size * rng.uniform(0.5, 0.8)
    s = s.view(cx - 1.3 * size, cx + 1.3 * size, base - trunk_h - size * 2.8, base)
    trunk = (np.abs(s.x - cx) < size * 0.12) & (s.y > base - trunk_h - size * 0.3) & (s.y < base)
    if rng.random() < 0.4:  # conifer: a tall triangle
        top = base - trunk_h - size * 2.6
        canopy = (s.y > top) & (s.y < base - trunk_h * 0.6) & (np.abs(s.x - cx) < (s.y - top) * 0.38)
        green = _rgb(30, 85, 45)
    else:  # round canopy
        cy = base - trunk_h - size * 0.85
        canopy = ((s.x - cx) / (size * 0.85)) ** 2 + ((s.y - cy) / size) ** 2 < 1 + 0.25 * (s.mid - 0.5)
        green = _rgb(40, 110, 40) * (1 - golden * 0.2) + _rgb(90, 110, 30) * golden * 0.2
    light = (
        1.0
        + 0.35 * sun_dir * np.clip((s.x - cx) / max(size, 1e-3), -1, 1)
        - 0.25 * np.clip((s.y - (base - trunk_h - size)) / max(size, 1e-3), -1, 1)
    )
    leaves = green * (0.65 + 0.6 * s.fine[..., None]) * light[..., None]
    bark = np.broadcast_to(_rgb(95, 65, 40) * (0.8 + 0.3 * s.fine[..., None]), leaves.shape)
    color = np.where(canopy[..., None], leaves, bark)
    s.paint(canopy | trunk, "tree", color)


def _rock(s: _Scene, rng, cx: float, base: float, scale: float, sun_dir: float) -> None:
    r = 0.035 * scale * rng.uniform(0.7, 1.4)
    _shadow(s, cx, base, r * 1.5, r * 0.3, sun_dir)
    cy = base - r * 0.55
    s = s.view(cx - 1.8 * r, cx + 1.8 * r, cy - 1.2 * r, base)
    blob = (((s.x - cx) / (1.5 * r)) ** 2 + ((s.y - cy) / r) ** 2 < 1 + 0.3 * (s.mid - 0.5)) & (s.y < base)
    light = 1.0 + 0.3 * sun_dir * np.clip((s.x - cx) / (1.5 * r), -1, 1) - 0.3 * np.clip((s.y - cy) / r, -1, 1)
    grey = _rgb(135, 132, 128) * rng.uniform(0.85, 1.1)
    s.paint(blob, "rock", grey * (0.7 + 0.45 * s.fine[..., None]) * light[..., None])


def _house(s: _Scene, rng, cx: float, base: float, scale: float, sun_dir: float) -> None:
    bw = 0.14 * scale * rng.uniform(0.8, 1.2)
    bh = bw * rng.uniform(0.55, 0.8)
    left = cx - bw / 2
    _shadow(s, cx, base, bw * 0.8, bw * 0.12, sun_dir)
    roof_top = base - bh - bw * rng.uniform(0.3, 0.5)
    s = s.view(cx - 0.6 * bw, cx + 0.6 * bw, roof_top, base)
    inside = (s.x > left) & (s.x < left + bw)
    body = inside & (s.y > base - bh) & (s.y < base)
    roof = (
        (s.y <= base - bh)
        & (s.y > roof_top + np.abs(s.x - cx) * (base - bh - roof_top) / (bw * 0.55))
        & (np.abs(s.x - cx) < bw * 0.55)
    )
    wall = _rgb(*rng.choice([(225, 210, 180), (235, 235, 225), (200, 170, 130)])) * (0.9 + 0.1 * s.fine[..., None])
    wall = wall * (1.0 + 0.12 * sun_dir * np.sign(s.x - cx))[..., None]
    u, v = (s.x - left) / bw, (s.y - (base - bh)) / bh
    window = ((np.abs(u - 0.25) < 0.09) | (np.abs(u - 0.75) < 0.09)) & (np.abs(v - 0.4) < 0.14)
    door = (np.abs(u - 0.5) < 0.08) & (v > 0.5)
    wall = np.where((window | door)[..., None], _rgb(60, 55, 65), wall)
    tiles = _rgb(*rng.choice([(170, 60, 45), (120, 60, 40), (90, 80, 85)])) * (0.85 + 0.2 * s.fine[..., None])
    s.paint(body | roof, "house", np.where(roof[..., None], tiles, wall))


# --- tasks and the folder source ------------------------------------------------------------


def _load_generated(seed: int, index: int, width: int, height: int):
    from pipeline.datasets.common import ImageData, encode_png
    from pipeline.datasets.writer import Loaded

    image, label, instance = generate_sample(seed, index, width, height)
    return Loaded(ImageData(encode_png(image), ".png", width, height), label, None, instance)


def _samples(demo):
    for split, count, offset in (("train", demo.num_train, 0), ("val", demo.num_val, VAL_OFFSET)):
        for i in range(count):
            yield split, f"demo_{split}_{i:06d}", offset + i


def demo_tasks(demo) -> tuple[list, ClassTable]:
    """Writer tasks for the demo samples of ``demo`` (DemoDataSettings) and the class table."""
    from pipeline.datasets.writer import SampleTask

    tasks = []
    for split, name, index in _samples(demo):
        tag = f"{GENERATOR_VERSION}:{demo.seed}:{index}:{demo.width}x{demo.height}"
        tasks.append(
            SampleTask(
                name,
                split,
                f"generated:{demo.seed}:{index}",
                (),
                partial(_load_generated, demo.seed, index, demo.width, demo.height),
                tag,
            )
        )
    return tasks, class_table()


def write_demo_source(out_dir: Path | str, settings) -> Path:
    """Write the demo samples of ``settings`` (DemoDataSettings) as a ``folder``-format source:
    ``images/``, ``labels/``, ``instances/`` per split and ``classes.json``. Ingesting it gives
    byte-identical files to the ``demo`` format (only the manifest's ``source`` differs). The folder
    is replaced as a whole (atomically); add your own samples after writing it."""
    from pipeline.datasets.common import encode_png
    from pipeline.io import atomic_path

    out = Path(out_dir)
    with atomic_path(out) as tmp:  # the whole tree appears at once
        for split, name, index in _samples(settings):
            image, label, instance = generate_sample(settings.seed, index, settings.width, settings.height)
            for sub, arr in (("images", image), ("labels", label), ("instances", instance)):
                (tmp / sub / split).mkdir(parents=True, exist_ok=True)
                (tmp / sub / split / f"{name}.png").write_bytes(encode_png(arr))  # the bytes the demo format writes
        table = class_table()
        doc = {
            "dataset": "demo",
            "contain_dontcare_label": table.contain_dontcare_label,
            "classes": table.to_dict()["classes"],
        }
        (tmp / "classes.json").write_text(json.dumps(doc, indent=2) + "\n")
    return out


# --- a data drop: more training samples, optionally of a class the demo did not have -----------

DROP_CLASSES = {"fence": (150, 105, 60)}  # classes a data drop can add (appended after the demo's 12)
DROP_OFFSET = 2_000_000  # drop samples use indices from here (never a training or validation scene)


def paint_fence(image: np.ndarray, label: np.ndarray, instance: np.ndarray, index: int, seed: int) -> None:
    """A wooden fence across the foreground (two rails, regular posts), painted in place as class
    ``index``; it becomes one new instance."""
    h, w = label.shape
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xFE9CE])
    y = ((np.arange(h) + 0.5) / h)[:, None]
    x = ((np.arange(w) + 0.5) / w)[None, :]
    top = rng.uniform(0.68, 0.78)
    rails = (np.abs(y - (top + 0.05)) < 0.018) | (np.abs(y - (top + 0.12)) < 0.018)
    spacing = rng.uniform(0.1, 0.16)
    posts = (np.abs(((x + rng.uniform(0, spacing)) % spacing) - spacing / 2) < 0.02) & (y > top) & (y < top + 0.2)
    mask = np.broadcast_to(rails | posts, (h, w))
    wood = _rgb(*DROP_CLASSES["fence"]) * rng.uniform(0.8, 1.1)
    grain = 0.75 + 0.4 * rng.random((h, w, 1), dtype=np.float32)
    image[mask] = np.clip(wood * grain, 0, 255).astype(np.uint8)[mask]
    label[mask] = index
    instance[mask] = int(instance.max()) + 1


def add_demo_drop(source: Path | str, settings, count: int, new_class: str | None = None, seed: int = 1) -> list[str]:
    """Add ``count`` new training samples to a ``folder``-format demo source (``write_demo_source``);
    with ``new_class`` (a name of :data:`DROP_CLASSES`) every other one, at least one, shows that class,
    appended to ``classes.json`` when missing. The validation split is untouched. -> the new sample names."""
    from pipeline.datasets.common import encode_png
    from pipeline.errors import MissingInputError, ParamsError
    from pipeline.io import atomic_write_bytes, atomic_write_text

    source = Path(source)
    if not (source / "classes.json").is_file():
        raise MissingInputError(
            f"{source / 'classes.json'}: no demo source there; write one with `gaugan-pipeline demo-data`"
        )
    doc = json.loads((source / "classes.json").read_text())
    new_index = None
    if new_class is not None:
        if new_class not in DROP_CLASSES:
            raise ParamsError(f"--new-class must be one of {sorted(DROP_CLASSES)}, got {new_class!r}")
        names = [c["name"] for c in doc["classes"]]
        if new_class not in names:
            doc["classes"].append({"index": len(names), "name": new_class, "color": list(DROP_CLASSES[new_class])})
            atomic_write_text(source / "classes.json", json.dumps(doc, indent=2) + "\n")
        new_index = next(c["index"] for c in doc["classes"] if c["name"] == new_class)
    written = []
    for i in range(count):
        index = DROP_OFFSET + seed * 10_000 + i
        image, label, instance = generate_sample(settings.seed, index, settings.width, settings.height)
        if new_index is not None and i % 2 == 0:
            paint_fence(image, label, instance, new_index, index)
        name = f"drop{seed}_{i:06d}"
        for sub, arr in (("images", image), ("labels", label), ("instances", instance)):
            atomic_write_bytes(source / sub / "train" / f"{name}.png", encode_png(arr))
        written.append(name)
    return written
