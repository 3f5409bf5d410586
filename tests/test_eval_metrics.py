"""Segmentation scores from a dataset-level confusion matrix, and FID/KID on feature matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.evaluation.feature_stats import fid_bootstrap, frechet_distance, precision_recall
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
    assert a[1] is not None and a[1] > 0  # 60 images, subsets of 20: a spread to report
    with pytest.raises(ValueError, match="at least 2"):
        compute_fid(real[:1], fake)


def test_kid_std_is_null_when_the_split_is_no_larger_than_the_subset(caplog):
    real, fake = _features(0, 60, 8, 0.0), _features(1, 60, 8, 0.5)
    with caplog.at_level("WARNING", logger="pipeline.evaluation.metrics"):
        mean, std, size = compute_kid(real[:7], fake[:9], subset_size=1000, subsets=100)
    assert std is None and size == 7 and mean > 0
    assert "kid_std is null" in caplog.text and "1000" in caplog.text
    # the unbiased MMD of the 7 real and the first 7 generated features, whatever the seed
    assert compute_kid(real[:7], fake[:9], subset_size=1000, seed=5)[0] == pytest.approx(mean, rel=1e-6)
    assert compute_kid(real, fake, subset_size=60)[1] is None  # equal to the subset: every subset is everything


def test_average_all_counts_absent_classes_as_zero_and_unmapped_predictions_as_errors():
    # ADE-like: class 0 ignored, class 3 absent from ground truth and prediction.
    present = scores_from_confusion(EXPECTED_CM, ignore=[0], average="present")
    every = scores_from_confusion(EXPECTED_CM, ignore=[0], average="all")
    assert present.miou == pytest.approx((IOU1 + IOU2 + IOU4) / 3)
    assert every.iou[3] == 0.0 and every.miou == pytest.approx((IOU1 + IOU2 + IOU4) / 4)
    # two class-1 pixels predicted as a network output with no dataset class: more union, more pixels
    unmapped = np.array([0, 2, 0, 0, 0])
    scores = scores_from_confusion(EXPECTED_CM, ignore=[0], unmapped=unmapped)
    assert scores.iou[1] == pytest.approx(4 / (6 + 5 - 4 + 2))
    assert scores.accuracy == pytest.approx(7 / 13) and scores.num_pixels == 13

    acc = ConfusionAccumulator(5, ignore=[0], average="all")
    acc.update(np.array([[1, 5], [5, 2]]), np.array([[1, 1], [2, 2]]))  # 5 = "no dataset class"
    s = acc.scores()
    np.testing.assert_array_equal(s.unmapped, [0, 1, 1, 0, 0])
    assert acc.matrix.shape == (5, 5) and s.iou[1] == pytest.approx(0.5) and s.iou[2] == pytest.approx(0.5)
    assert s.miou == pytest.approx(1 / 4)  # classes 1..4 scored, 3 and 4 absent: 0


def test_precision_and_recall_on_a_hand_counted_case():
    # 1-D features; each real point's ball reaches its 3rd nearest real neighbour (radii 3, 2, 2, 2, 3).
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    spread = torch.tensor([[10.0], [2.5], [5.5], [-2.9], [7.0]])  # 10 is outside every ball; 7 is on 4's border
    out = precision_recall(real, spread, k=3)
    assert out["precision"] == pytest.approx(4 / 5) and out["recall"] == pytest.approx(1.0)
    collapsed = torch.tensor([[2.0], [2.1], [2.2], [2.3], [2.4]])  # mode collapse: fake balls of radius <= 0.3
    out = precision_recall(real, collapsed, k=3)
    assert out["precision"] == pytest.approx(1.0) and out["recall"] == pytest.approx(1 / 5)  # only real 2.0 covered


def test_frechet_distance_and_its_bootstrap_interval():
    real, fake = _features(0, 300, 6, 0.0), _features(1, 300, 6, 0.4)
    # more images than dimensions (d x d route) and fewer (n x n route): torchmetrics' value both ways
    assert frechet_distance(real, fake) == pytest.approx(compute_fid(real, fake), rel=1e-5)
    wide_real, wide_fake = _features(2, 20, 64, 0.0), _features(3, 20, 64, 0.3)
    assert frechet_distance(wide_real, wide_fake) == pytest.approx(compute_fid(wide_real, wide_fake), rel=1e-4)
    a = fid_bootstrap(real, fake, replicates=30, seed=1)
    assert a == fid_bootstrap(real, fake, replicates=30, seed=1)  # seeded
    assert 0 < a["low"] < a["high"] and a["std"] > 0 and a["replicates"] == 30
    # more images, a narrower interval
    big = fid_bootstrap(_features(0, 2000, 6, 0.0), _features(1, 2000, 6, 0.4), replicates=30, seed=1)
    assert big["high"] - big["low"] < 0.6 * (a["high"] - a["low"])
    assert fid_bootstrap(real, fake, replicates=0, seed=1) is None


def _facts(**kw):
    from pipeline.evaluation.comparable import INCEPTION_SHA256, EvaluationFacts

    backbone = {"name": "inception-v3-tf-2015-12-05", "feature_dim": 2048, "weights_sha256": INCEPTION_SHA256}
    base = dict(
        dataset="ade20k",
        split_size=2000,
        num_images=2000,
        hw=(256, 256),
        backbone=backbone,
        style_source="none",
        unlabelled_maps=0,
    )
    return EvaluationFacts(**{**base, **kw})


def test_paper_comparable_only_when_every_condition_holds_with_the_reasons():
    from pipeline.evaluation.comparable import paper_comparability

    assert paper_comparability(_facts()) == (True, [])
    assert paper_comparability(_facts(dataset="cityscapes", split_size=500, num_images=500, hw=(256, 512)))[0]
    ok, reasons = paper_comparability(_facts(num_images=50))  # a subset
    assert not ok and reasons == ["50 of the 2000 validation images were evaluated (evaluate.max_images)"]
    ok, reasons = paper_comparability(_facts(hw=(128, 128)))  # a wrong resolution
    assert not ok and reasons == ["evaluated at 128x128; the paper evaluated ade20k at 256x256"]
    ok, reasons = paper_comparability(
        _facts(
            backbone={
                "name": "inception-v3-arch-other-weights-6726825d",
                "feature_dim": 768,
                "weights_sha256": "6726825d" + "0" * 56,
                "weights_file": "w.pth",
            },
            split_size=1500,
            num_images=1000,
            style_source="encoded-real",
            unlabelled_maps=2,
        )
    )
    assert not ok and len(reasons) == 6
    text = " | ".join(reasons)
    for needle in (
        "not the official file's",
        "768 dimensions",
        "the paper's ade20k split has 2000",
        "1000 of the 1500",
        "2 validation label maps",
        "reconstruction score",
    ):
        assert needle in text
    ok, reasons = paper_comparability(_facts(dataset="demo"))
    assert not ok and "'demo' has no published protocol" in reasons[0]
