"""Instance edges: the reference's 4-neighbour rule, NumPy and torch, on real SPADE instance maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gaugan.edges import instance_edges, instance_edges_torch


def naive_edges(inst: np.ndarray) -> np.ndarray:
    """The rule spelled out pixel by pixel: 255 where a 4-neighbour inside the image differs."""
    h, w = inst.shape
    out = np.zeros((h, w), np.uint8)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and inst[yy, xx] != inst[y, x]:
                    out[y, x] = 255
                    break
    return out


@pytest.mark.parametrize("name", ["val_inst/000000000139.png", "train_inst/000000029286.png"])
def test_numpy_and_torch_edges_equal_the_naive_rule_on_real_maps(real_fixtures, name):
    inst = np.array(Image.open(real_fixtures / "cocostuff/spade_coco_stuff" / name))
    crop = inst[100:220, 150:330]  # a busy region; the naive loop is slow on full frames
    expected = naive_edges(crop)
    assert 0.02 < (expected > 0).mean() < 0.5
    got = instance_edges(crop)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    for batch in (torch.from_numpy(crop.astype(np.int64))[None], torch.from_numpy(crop.astype(np.int32))[None, None]):
        t = instance_edges_torch(batch)
        assert t.shape == (1, 1, *crop.shape) and t.dtype == torch.float32
        np.testing.assert_array_equal(t[0, 0].numpy(), expected / 255.0)
    # the full frame: numpy and torch agree with each other
    full = torch.from_numpy(inst.astype(np.int64))[None]
    np.testing.assert_array_equal(instance_edges_torch(full)[0, 0].numpy() * 255, instance_edges(inst))


def test_both_sides_marked_and_borders_excluded():
    inst = np.zeros((5, 6), np.int32)
    inst[:, 3:] = 7  # a vertical boundary between columns 2 and 3
    e = instance_edges(inst)
    assert e[:, 2].tolist() == [255] * 5 and e[:, 3].tolist() == [255] * 5
    assert not e[:, [0, 1, 4, 5]].any()  # image borders are not edges
    single = np.zeros((4, 4), np.int32)
    single[1, 1] = 3  # one pixel: itself and its 4 neighbours, not the diagonals
    expected = np.zeros((4, 4), np.uint8)
    for y, x in ((1, 1), (0, 1), (2, 1), (1, 0), (1, 2)):
        expected[y, x] = 255
    np.testing.assert_array_equal(instance_edges(single), expected)


def test_random_maps_batch_torch_matches_numpy():
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 3, size=(3, 17, 23))
    t = instance_edges_torch(torch.from_numpy(maps))
    for i in range(3):
        np.testing.assert_array_equal(t[i, 0].numpy() * 255, naive_edges(maps[i]))
    with pytest.raises(ValueError, match="must be"):
        instance_edges_torch(torch.zeros(2, 3, 4, 4, dtype=torch.long))
