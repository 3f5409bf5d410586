"""Segmentation scores from a dataset-level confusion matrix, and FID/KID on feature matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.evaluation.metrics import ConfusionAccumulator, compute_fid, compute_kid, scores_from_confusion

# Five classes; class 0 is ignored (as ADE20K's "other"), 255 is dontcare, class 3 never occurs
# in the ground truth and is only predicted on a dontcare pixel, so it is absent from the split.
GT = np.array(
    [
        [[1, 1, 2, 255], [0, 4, 4, 1]],
        [[4, 4, 1, 255], [255, 0, 1, 1]],
    ]
)
PRED = np.array(
    [
        [[1, 2, 2, 3], [4, 4, 0, 1]],
        [[4, 1, 1, 0], [2, 2, 1, 4]],
    ]
)
# Counted by hand, pixel by pixel (rows = ground truth, columns = prediction); pixels whose ground
# truth is 255 or 0 are dropped, whatever was predicted there.
EXPECTED_CM = np.array(
    [
        [0, 0, 0, 0, 0],
        [0, 4, 1, 0, 1],  # GT 1: 4 right, one predicted 2, one predicted 4
        [0, 0, 1, 0, 0],  # GT 2: right once
        [0, 0, 0, 0, 0],  # class 3: absent
        [1, 1, 0, 0, 2],  # GT 4: 2 right, one predicted 1, one predicted the ignored class 0 (an error)
    ]
)
IOU1 = 4 / (6 + 5 - 4)
IOU2 = 1 / (1 + 2 - 1)
IOU4 = 2 / (4 + 3 - 2)


def test_confusion_matrix_matches_hand_count_over_the_split():
    acc = ConfusionAccumulator(5, ignore=[0])
    for pred, gt in zip(PRED, GT, strict=True):  # one image at a time: the matrix accumulates over the split
        acc.update(torch.from_numpy(pred), torch.from_numpy(gt))
    np.testing.assert_array_equal(acc.matrix, EXPECTED_CM)

    scores = acc.scores()
    assert scores.num_pixels == 11
    assert scores.accuracy == pytest.approx(7 / 11)
    assert scores.iou[1] == pytest.approx(IOU1)
    assert scores.iou[2] == pytest.approx(IOU2)
    assert scores.iou[4] == pytest.approx(IOU4)
    assert math.isnan(scores.iou[0])  # ignored, although it was predicted once
    assert math.isnan(scores.iou[3])  # absent from GT and prediction
    assert scores.miou == pytest.approx((IOU1 + IOU2 + IOU4) / 3)


def test_split_level_miou_is_not_the_mean_of_per_image_mious():
    per_image = []
    for pred, gt in zip(PRED, GT, strict=True):
        acc = ConfusionAccumulator(5, ignore=[0])
        acc.update(pred, gt)
        per_image.append(acc.scores().miou)
    assert np.mean(per_image) != pytest.approx((IOU1 + IOU2 + IOU4) / 3)


def test_without_ignore_list_class_zero_counts():
    acc = ConfusionAccumulator(5)
    acc.update(PRED, GT)
    cm = acc.matrix
    assert cm[0].sum() == 2  # the two GT-0 pixels are now scored (predicted 4 and 2)
    assert cm[0, 2] == 1 and cm[0, 4] == 1
    assert acc.scores().iou[0] == 0.0
    assert not math.isnan(acc.scores().iou[0])


def test_scores_from_confusion_rejects_empty_and_bad_labels():
    with pytest.raises(ValueError, match="no scored pixels"):
        scores_from_confusion(np.zeros((3, 3), dtype=np.int64))
    acc = ConfusionAccumulator(3)
    with pytest.raises(ValueError, match="outside 0..2"):
        acc.update(np.zeros((2, 2), dtype=np.int64), np.array([[0, 7], [1, 255]]))


def _features(seed: int, n: int, d: int, shift: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift


def test_fid_matches_closed_form_for_gaussian_features():
    real, fake = _features(0, 400, 4, 0.0), _features(1, 400, 4, 1.0)
    mu1, mu2 = real.double().mean(0), fake.double().mean(0)
    s1, s2 = torch.cov(real.double().T), torch.cov(fake.double().T)
    # Closed form through the symmetric square root (scipy-free)
    e, v = torch.linalg.eigh(s1)
    r1 = v @ torch.diag(e.clamp(min=0).sqrt()) @ v.T
    m = r1 @ s2 @ r1
    tr_sqrt = torch.linalg.eigvalsh(m).clamp(min=0).sqrt().sum()
    expected = float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt)
    assert compute_fid(real, fake) == pytest.approx(expected, rel=1e-6)
    assert expected > 3.5  # four dimensions shifted by one: about 4
    assert compute_fid(real, real) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_seeded_and_zero_mean_for_one_distribution():
    real, fake = _features(0, 60, 8, 0.0), _features(1, 60, 8, 0.5)
    a = compute_kid(real, fake, subset_size=20, subsets=10, seed=3)
    b = compute_kid(real, fake, subset_size=20, subsets=10, seed=3)
    assert a == b
    assert a[0] > 0.01 and a[2] == 20
    same = compute_kid(real, _features(2, 60, 8, 0.0), subset_size=20, subsets=10, seed=3)
    assert abs(same[0]) < a[0] / 5
    # subset size is capped at the number of samples
    assert compute_kid(real[:7], fake[:9], subset_size=50, subsets=2)[2] == 7
    with pytest.raises(ValueError, match="at least 2"):
        compute_fid(real[:1], fake)
