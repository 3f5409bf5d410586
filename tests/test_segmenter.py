"""Segmentation networks: UNet shapes, torchvision weights loading, the segmenter file, train-segmenter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TOY_NAMES, make_params, toy_classes, write_toy_prepared

from gaugan.data import dataset_id
from pipeline.errors import SegmenterError
from pipeline.evaluation.segmentation_nets import UNetSmall, build_network
from pipeline.evaluation.segmenter import load_segmenter, save_segmenter
from pipeline.evaluation.segmenter_training import load_pretrained
from pipeline.stages.train_segmenter import run as run_train_segmenter


def test_unet_small_any_size_and_file_round_trip(tmp_path):
    torch.manual_seed(0)
    net = UNetSmall(num_classes=5, width=4).eval()
    for h, w in [(32, 32), (37, 50)]:  # not multiples of 8: padded inside, cropped back
        assert net(torch.randn(2, 3, h, w)).shape == (2, 5, h, w)
    classes = toy_classes(names="abcde")
    path = save_segmenter(tmp_path / "seg.pt", net, "unet-small", 5, 4, {"classes": classes.to_dict()})
    seg = load_segmenter(path)
    assert seg.arch == "unet-small" and seg.num_classes == 5 and seg.classes == classes
    images = np.random.default_rng(0).integers(0, 256, (3, 24, 40, 3), dtype=np.uint8)
    pred = seg.predict(images, batch_size=2)
    assert pred.shape == (3, 24, 40) and pred.dtype == torch.long
    assert int(pred.min()) >= 0 and int(pred.max()) < 5
    # the same network, loaded again, predicts the same
    assert torch.equal(load_segmenter(path).predict(images), pred)
    with pytest.raises(FileNotFoundError, match="train-segmenter"):
        load_segmenter(tmp_path / "missing.pt")


def test_torchvision_weights_load_checked_and_head_replaced(tmp_path):
    # A "pretrained" torchvision file with 21 classes (as torchvision's own VOC-class files), bare keys.
    src = build_network("lraspp_mobilenet_v3_large", 21).net
    path = tmp_path / "lraspp.pth"
    torch.save(src.state_dict(), path)

    net = build_network("lraspp_mobilenet_v3_large", 6)
    fresh = load_pretrained(net, "lraspp_mobilenet_v3_large", path, 6)
    assert sorted(fresh) == sorted(
        f"net.classifier.{k}_classifier.{p}" for k in ("low", "high") for p in ("weight", "bias")
    )
    # the backbone came from the file
    key = "net.backbone.0.0.weight"
    assert torch.equal(net.state_dict()[key], src.state_dict()[key[len("net.") :]])
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 6, 32, 32)

    # another architecture's file is an error, never silently random weights
    with pytest.raises(SegmenterError, match="does not fit"):
        load_pretrained(build_network("unet-small", 6, 4), "unet-small", path, 6)
    with pytest.raises(SegmenterError, match="does not exist"):
        load_pretrained(net, "lraspp_mobilenet_v3_large", tmp_path / "nope.pth", 6)


# --------------------------------------------------------------------------------------------
# the train-segmenter stage


def _params(**segmenter):
    base = {"width": 8, "steps": 30, "batch_size": 8, "lr": 0.003, "device": "cpu"}
    return make_params({"seed": 2, "train": {"crop_size": 32, "load_size": 32}, "segmenter": {**base, **segmenter}})


def test_train_segmenter_writes_file_and_metrics_and_is_seeded(tmp_path):
    import json

    params = _params()
    data = write_toy_prepared(tmp_path / params.data.out, n_train=12, n_val=4)
    out = run_train_segmenter(params, tmp_path)
    assert out == tmp_path / params.segmenter.out
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert raw["arch"] == "unet-small" and raw["num_classes"] == 4 and raw["width"] == 8
    assert raw["classes"]["dataset"] == "toy" and [c["name"] for c in raw["classes"]["classes"]] == list(TOY_NAMES)
    assert raw["dataset_id"] == dataset_id(data)
    assert raw["input_hw"] == [32, 32]
    metrics = json.loads((tmp_path / params.segmenter.metrics).read_text())
    assert metrics["steps"] == 30 and metrics["num_train_images"] == 12 and metrics["num_val_images"] == 4
    assert 0 < metrics["train_loss"] < 1.0  # from ~1.4 (4 classes) at the start
    assert metrics["accuracy_real_val"] > 0.7

    # an untrained network of the same shape does much worse on the same images
    from gaugan.data import PreparedDataset
    from pipeline.evaluation.segmenter import Segmenter, score_on_split

    torch.manual_seed(0)
    untrained = Segmenter(UNetSmall(4, 8).eval(), "unet-small", 4)
    val = PreparedDataset(data, "val", load_instances=False)
    assert score_on_split(untrained, val, (32, 32), []).accuracy < metrics["accuracy_real_val"] - 0.3

    # same seed, same data: the same weights
    (tmp_path / "b" / "data").mkdir(parents=True)
    (tmp_path / "b" / params.data.out).symlink_to(data, target_is_directory=True)
    raw_b = torch.load(run_train_segmenter(params, tmp_path / "b"), map_location="cpu", weights_only=True)
    for key, value in raw["state_dict"].items():
        assert torch.equal(value, raw_b["state_dict"][key]), key


def test_train_segmenter_refuses_torchvision_arch_without_weights_and_empty_train(tmp_path):
    params = _params(arch="deeplabv3_mobilenet_v3_large")
    write_toy_prepared(tmp_path / params.data.out, n_train=2, n_val=2)
    with pytest.raises(SegmenterError, match="segmenter.weights is null.*unet-small"):
        run_train_segmenter(params, tmp_path)

    empty = tmp_path / "empty"
    write_toy_prepared(empty / params.data.out, n_train=0, n_val=2)
    with pytest.raises(SegmenterError, match="train split is empty"):
        run_train_segmenter(_params(), empty)


def test_train_segmenter_fine_tunes_torchvision_weights_with_another_head(tmp_path):
    weights = tmp_path / "lraspp-21.pth"
    torch.save(build_network("lraspp_mobilenet_v3_large", 21).net.state_dict(), weights)
    params = _params(arch="lraspp_mobilenet_v3_large", weights=str(weights), steps=0)
    write_toy_prepared(tmp_path / params.data.out, n_train=4, n_val=2)
    with pytest.raises(SegmenterError, match="segmenter.steps > 0"):
        run_train_segmenter(params, tmp_path)
    out = run_train_segmenter(
        _params(arch="lraspp_mobilenet_v3_large", weights=str(weights), steps=2, batch_size=4), tmp_path
    )
    seg = load_segmenter(out)
    assert seg.arch == "lraspp_mobilenet_v3_large" and seg.num_classes == 4
    assert seg.meta["pretrained_from"] == str(weights) and seg.meta["metrics"]["fresh_head_keys"] == 4
    assert seg.predict(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 32, 32)


def test_a_fine_tune_continues_the_parents_segmenter_with_its_classes_grown(tmp_path):
    """The segmenter the parent version was scored with (``<train.parent_dir>/segmenter.pt``) is
    continued for ``segmenter.continue_steps`` steps when its settings match, its old classes' rows
    kept and a new class's row added; another setting, or continue_steps 0, trains from scratch."""
    import json

    params = _params(continue_steps=6)
    old = tmp_path / "old"
    write_toy_prepared(old / params.data.out, n_train=12, n_val=4, names=TOY_NAMES[:3])
    parent_file = run_train_segmenter(params, old)
    parent = torch.load(parent_file, map_location="cpu", weights_only=True)
    assert parent["settings"]["arch"] == "unet-small" and parent["settings"]["input_hw"] == [32, 32]

    grown = tmp_path / "grown"  # a data drop with a fourth class; the parent's segmenter in the parent folder
    write_toy_prepared(grown / params.data.out, n_train=12, n_val=4, names=TOY_NAMES[:4])
    (grown / params.train.parent_dir).mkdir(parents=True)
    (grown / params.train.parent_dir / "segmenter.pt").write_bytes(parent_file.read_bytes())
    out = torch.load(run_train_segmenter(params, grown), map_location="cpu", weights_only=True)
    metrics = json.loads((grown / params.segmenter.metrics).read_text())
    assert metrics["continued_from_parent"] is True and metrics["steps"] == 6
    assert out["continued_from"]["sha256"] and out["num_classes"] == 4
    head = [
        k
        for k, v in parent["state_dict"].items()
        if v.dim() >= 1 and v.shape[0] == 3 and out["state_dict"][k].shape[0] == 4
    ]
    assert head, "no classifier row grew"

    # another setting than the parent's: from scratch, `segmenter.steps` steps
    run_train_segmenter(_params(continue_steps=6, width=4), grown)
    assert json.loads((grown / params.segmenter.metrics).read_text())["continued_from_parent"] is False
    run_train_segmenter(_params(continue_steps=0), grown)
    scratch = json.loads((grown / params.segmenter.metrics).read_text())
    assert scratch["continued_from_parent"] is False and scratch["steps"] == 30


def test_growing_a_segmenter_keeps_the_old_classes_rows():
    from pipeline.evaluation.segmenter_training import grow_into

    torch.manual_seed(0)
    small, big = UNetSmall(3, 4), UNetSmall(5, 4)
    fresh = {k: v.clone() for k, v in big.state_dict().items()}
    grown = grow_into(big, small.state_dict(), 3, 5)
    assert grown
    for key in grown:
        assert torch.equal(big.state_dict()[key][:3], small.state_dict()[key])
        assert torch.equal(big.state_dict()[key][3:], fresh[key][3:])
    with pytest.raises(SegmenterError, match="shape"):
        grow_into(UNetSmall(5, 8), small.state_dict(), 3, 5)
