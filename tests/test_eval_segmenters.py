"""Segmenters exported elsewhere (TorchScript, ONNX) with their spec: preprocessing, class map, scoring size.

The networks are built here: a "colour reader" whose logits are the raw B, G, R values it gets
back by undoing a BGR, mean-only preprocessing (as DeepLabV2's Caffe weights expect). Fed the
wrong preprocessing it reads the wrong colours, so the hand-counted scores below hold only when
the spec is applied exactly.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from conftest import make_params, write_toy_prepared
from torch import nn

from pipeline.errors import SegmenterError
from pipeline.evaluation.inputs import scored_ignore
from pipeline.evaluation.metrics import ConfusionAccumulator
from pipeline.evaluation.segmenter import load_segmenter
from pipeline.stages.train_segmenter import run as run_train_segmenter

CAFFE_MEAN_BGR = [104.008, 116.669, 122.675]  # DeepLabV2 (COCO-Stuff) preprocessing: BGR, 0..255, mean only
NAMES = ("other", "sky", "grass", "water", "sand")  # the dataset: 5 classes
# network output 0 (blue) -> water (3), 1 (green) -> grass (2), 2 (red) -> no dataset class
CLASS_MAP = {0: 3, 1: 2, 2: 255}


class ColourReader(nn.Module):
    """Logits = the raw B, G, R values (outputs 0, 1, 2), recovered from BGR minus the Caffe mean."""

    def __init__(self, downsample: int = 1):
        super().__init__()
        self.register_buffer("mean", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = x + self.mean
        if self.downsample > 1:
            raw = nn.functional.avg_pool2d(raw, self.downsample)
        return raw


def _torchscript(path, downsample: int = 1):
    torch.jit.trace(ColourReader(downsample), torch.zeros(1, 3, 8, 8)).save(str(path))
    return path


def _onnx(path):
    buf = io.BytesIO()
    torch.onnx.export(
        ColourReader(),
        (torch.zeros(1, 3, 8, 8),),
        buf,
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}},
    )
    path.write_bytes(buf.getvalue())
    return path


def _params(arch: str, weights, **spec):
    segmenter = {
        "arch": arch,
        "weights": str(weights) if weights else None,
        "steps": 0,
        "batch_size": 4,
        "device": "cpu",
        "channel_order": "bgr",
        "pixel_range": 255.0,
        "mean": CAFFE_MEAN_BGR,
        "std": None,
        "class_map": CLASS_MAP,
        **spec,
    }
    return make_params({"seed": 0, "train": {"crop_size": 32, "load_size": 32}, "segmenter": segmenter})


BLUE, GREEN, RED = (0, 0, 255), (0, 255, 0), (255, 0, 0)
# one 2x4 RGB image and its ground truth (4 = sand: no output maps to it, so it is not scored)
IMAGE = np.array([[BLUE, BLUE, GREEN, GREEN], [RED, BLUE, GREEN, GREEN]], dtype=np.uint8)
TRUTH = np.array([[3, 3, 2, 3], [3, 2, 2, 4]])
# By hand: water (3): truth at 4 pixels, 2 right, predicted 3 times -> IoU 2 / (4 + 3 - 2) = 0.4 (the red
# pixel is an output without a dataset class: an error); grass (2): truth 3, right 2, predicted 3 -> 2 / 4.
EXPECTED = {"iou3": 0.4, "iou2": 0.5, "miou": 0.45, "accuracy": 4 / 7}


def _score(segmenter, image=IMAGE, truth=TRUTH):
    acc = ConfusionAccumulator(len(NAMES), scored_ignore([], segmenter), segmenter.spec.average)
    acc.update(segmenter.predict(image[None]), truth[None])
    return acc.scores()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("segdata")
    write_toy_prepared(root / "data/prepared", n_train=2, n_val=3, names=NAMES)
    return root


def _project(tmp_path, data):
    (tmp_path / "data").symlink_to(data / "data", target_is_directory=True)
    return tmp_path


@pytest.mark.parametrize("arch", ["torchscript", "onnx"])
def test_bgr_mean_only_segmenter_with_a_class_map_scores_the_hand_counted_case(arch, data, tmp_path):
    root = _project(tmp_path, data)
    weights = _torchscript(tmp_path / "reader.pt") if arch == "torchscript" else _onnx(tmp_path / "reader.onnx")
    out = run_train_segmenter(_params(arch, weights), root)  # packages the exported network

    seg = load_segmenter(out)
    assert seg.arch == arch and seg.outputs == 3 and seg.num_classes == 5
    assert seg.reachable() == {2, 3} and scored_ignore([0], seg) == [0, 1, 4]
    assert seg.meta["model_sha256"] and seg.meta["unreachable_classes"] == [0, 1, 4]
    scores = _score(seg)
    assert scores.iou[3] == pytest.approx(EXPECTED["iou3"]) and scores.iou[2] == pytest.approx(EXPECTED["iou2"])
    assert scores.miou == pytest.approx(EXPECTED["miou"]) and scores.accuracy == pytest.approx(EXPECTED["accuracy"])
    assert all(math.isnan(scores.iou[c]) for c in (0, 1, 4))
    assert scores.unmapped.tolist() == [0, 0, 0, 1, 0]

    # The same network read with the default (ImageNet RGB) preprocessing gets other numbers: the spec matters.
    wrong = run_train_segmenter(_params(arch, weights, channel_order="rgb", pixel_range=1.0, std=[0.229] * 3), root)
    assert _score(load_segmenter(wrong)).miou != pytest.approx(EXPECTED["miou"])


def test_scoring_size_upsamples_the_image_or_the_prediction(data, tmp_path):
    root = _project(tmp_path, data)
    weights = _torchscript(tmp_path / "half.pt", downsample=2)  # logits at half the input size
    image = np.repeat(np.repeat(IMAGE, 4, axis=0), 4, axis=1)  # 8x16, constant 4x4 blocks
    truth = np.repeat(np.repeat(TRUTH, 8, axis=0), 8, axis=1)  # the "original" label map at 16x32
    for upsample in ("image", "prediction"):
        out = run_train_segmenter(_params("torchscript", weights, input_size=[16, 32], upsample=upsample), root)
        seg = load_segmenter(out)
        pred = seg.predict(image[None])
        assert pred.shape == (1, 16, 32)  # scored at input_size either way
        # block centres are read right whatever the route (boundaries blur with bilinear resizing)
        np.testing.assert_array_equal(pred[0, 4::8, 4::8].numpy(), [[3, 3, 2, 2], [5, 3, 2, 2]])
        assert _score(seg, image, truth).miou > 0.3


def test_class_maps_and_exported_networks_are_checked(data, tmp_path):
    root = _project(tmp_path, data)
    weights = _torchscript(tmp_path / "reader.pt")
    with pytest.raises(SegmenterError, match=r"output ids \[7\] are not among its 3 outputs"):
        run_train_segmenter(_params("torchscript", weights, class_map={7: 1}), root)
    with pytest.raises(SegmenterError, match=r"dataset ids \[9\]"):
        run_train_segmenter(_params("torchscript", weights, class_map={0: 9}), root)
    with pytest.raises(SegmenterError, match="predicts 3 classes and the dataset has 5"):
        run_train_segmenter(_params("torchscript", weights, class_map=None), root)
    with pytest.raises(SegmenterError, match="set segmenter.steps: 0"):
        run_train_segmenter(_params("torchscript", weights, steps=5), root)
    with pytest.raises(SegmenterError, match="class_map is for networks exported elsewhere"):
        run_train_segmenter(_params("unet-small", None, class_map={0: 1}, steps=1), root)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(SegmenterError, match="not a TorchScript file"):
        run_train_segmenter(_params("torchscript", tmp_path / "junk.pt"), root)
    # a CSV class map (model_id,dataset_id rows, header allowed) is the same as the inline one
    (tmp_path / "map.csv").write_text("model_id,dataset_id\n0,3\n1,2\n2,255\n")
    seg = load_segmenter(
        run_train_segmenter(_params("torchscript", weights, class_map=str(tmp_path / "map.csv")), root)
    )
    assert seg.spec.class_map == CLASS_MAP and seg.meta["class_map_file"] == str(tmp_path / "map.csv")
    assert _score(seg).miou == pytest.approx(EXPECTED["miou"])
