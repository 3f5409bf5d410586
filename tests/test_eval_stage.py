"""The evaluate stage end to end on a tiny prepared dataset: files, numbers, MLflow, refusals."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.params import parse_params

SIZE = 32
COLORS = [[200, 40, 40], [40, 200, 40], [40, 40, 200], [220, 220, 40]]
NAMES = ["sky", "grass", "water", "sand"]


def write_prepared(root: Path, n_train: int = 16, n_val: int = 6, seed: int = 0, names=NAMES) -> Path:
    """A prepared dataset written directly in the format of gaugan.data: manifest, classes.json, PNGs.

    Images are class colours plus noise, so a small segmenter can learn them; each label map has a
    row of dontcare (255) pixels.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    label_nc = len(names)
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            label = np.full((SIZE, SIZE), rng.integers(0, label_nc), np.uint8)
            for _ in range(3):
                y, x = rng.integers(0, SIZE - 8, 2)
                h, w = rng.integers(6, SIZE // 2, 2)
                label[y : y + h, x : x + w] = rng.integers(0, label_nc)
            label[rng.integers(0, SIZE), :] = 255
            image = np.asarray(COLORS, np.float64)[np.minimum(label, label_nc - 1)] + rng.normal(0, 20, (SIZE, SIZE, 3))
            instance = ((label.astype(np.int32) + 1) * (label != 255)).astype(np.uint16)
            sid = f"{split}-{i:03d}"
            rel = {k: f"{k}s/{split}/{sid}.png" for k in ("image", "label", "instance")}
            for key, arr in (
                ("image", np.clip(image, 0, 255).astype(np.uint8)),
                ("label", label),
                ("instance", instance),
            ):
                (root / rel[key]).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / rel[key])
            rows.append(
                {
                    "id": sid,
                    "split": split,
                    **rel,
                    "edge": None,
                    "width": SIZE,
                    "height": SIZE,
                    "source": "test",
                    "source_hash": f"{seed}-{sid}",
                }
            )
    columns = ["id", "split", "image", "label", "instance", "edge", "width", "height", "source", "source_hash"]
    pd.DataFrame(rows, columns=columns).to_parquet(root / "manifest.parquet", index=False)
    classes = {
        "format_version": 1,
        "dataset": "toy",
        "label_nc": label_nc,
        "dontcare": 255,
        "contain_dontcare_label": True,
        "has_instances": True,
        "classes": [{"index": i, "name": n, "color": COLORS[i % len(COLORS)]} for i, n in enumerate(names)],
    }
    (root / "classes.json").write_text(json.dumps(classes))
    return root


def write_tiny_generator(path: Path, classes: dict, seed: int = 0, crop_size: int = SIZE, **model) -> Path:
    """A randomly initialised SPADE generator saved as the train stage saves it."""
    from gaugan.checkpoint import save_generator
    from gaugan.config import GauGANConfig
    from gaugan.encoder import ConvEncoder
    from gaugan.generator import SPADEGenerator

    settings = dict(ngf=4, z_dim=8, spade_hidden=8, use_instance=True)  # batch-norm SPADE: eval uses running stats
    settings.update(model)
    config = GauGANConfig(label_nc=int(classes["label_nc"]), crop_size=crop_size, **settings)
    torch.manual_seed(seed)
    netG = SPADEGenerator(config)
    netE = ConvEncoder(config) if config.use_vae else None
    save_generator(path, netG, netE, config, classes, {"steps": 0})
    return path


def tiny_params(**evaluate) -> object:
    return parse_params(
        {
            "seed": 1,
            "train": {"crop_size": SIZE, "load_size": SIZE},
            "segmenter": {"width": 8, "steps": 40, "batch_size": 8, "lr": 0.003, "device": "cpu"},
            "evaluate": {
                "feature_extractor": "tiny",
                "tiny_feature_dim": 64,
                "kid_subset_size": 4,
                "kid_subsets": 10,
                "num_samples": 3,
                "batch_size": 4,
                "device": "cpu",
                **evaluate,
            },
        }
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Prepared data, a trained tiny segmenter and a random tiny generator (shared, read-only)."""
    from pipeline.evaluation.segmenter import run_train_segmenter

    root = tmp_path_factory.mktemp("evalproj")
    params = tiny_params()
    write_prepared(root / params.data.out)
    classes = json.loads((root / params.data.out / "classes.json").read_text())
    write_tiny_generator(root / params.train.model_out, classes)
    run_train_segmenter(params, root)
    return root


def _link_project(tmp_path: Path, project: Path) -> Path:
    """A fresh working folder sharing the module's data, generator and segmenter."""
    for rel in ("data", "models"):
        (tmp_path / rel).symlink_to(project / rel, target_is_directory=True)
    return tmp_path


def _independent_miou(project: Path, params) -> tuple[float, float]:
    """mIoU/accuracy of the segmenter on the real val images, recomputed with numpy bincount."""
    from gaugan.data import PreparedDataset
    from pipeline.evaluation.segmenter import load_segmenter

    seg = load_segmenter(project / params.segmenter.out)
    val = PreparedDataset(project / params.data.out, "val", load_instances=False)
    cm = np.zeros((4, 4), np.int64)
    for i in range(len(val)):
        item = val[i]
        pred = seg.predict(item["image"][None]).numpy()[0]
        keep = item["label"] != 255
        cm += np.bincount(item["label"][keep] * 4 + pred[keep], minlength=16).reshape(4, 4)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    return float(iou.mean()), float(tp.sum() / cm.sum())


def test_evaluate_writes_metrics_table_grid_and_logs_to_the_training_run(project, tmp_path):
    import mlflow

    from pipeline.evaluation.stage import run_evaluate
    from pipeline.tracking import RunRef, ensure_experiment, write_run_ref

    root = _link_project(tmp_path, project)
    params = tiny_params()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=ensure_experiment("gaugan-toy", uri)) as run:
        run_id = run.info.run_id
    write_run_ref(root / params.train.out_dir / "run.json", RunRef(run_id, uri, "gaugan-toy"))

    metrics = run_evaluate(params, root)

    out = root / params.evaluate.out_dir
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in (
        "fid",
        "kid_mean",
        "kid_std",
        "miou",
        "accuracy",
        "miou_real",
        "accuracy_real",
        "miou_random",
        "num_images",
    ):
        assert isinstance(on_disk[key], (int, float)), key
        assert on_disk[key] == pytest.approx(metrics[key])
    assert on_disk["num_images"] == 6 and on_disk["height"] == on_disk["width"] == SIZE
    assert on_disk["backbone"]["name"].startswith("tiny-cnn") and on_disk["backbone"]["paper_comparable"] is False
    assert on_disk["backbone"]["num_images"] == 6 and on_disk["backbone"]["resolution"] == "32x32"
    assert on_disk["fid"] > 0 and on_disk["kid_subset_size"] == 4
    # The segmenter's real-image score (the ceiling), recomputed independently of the stage's code.
    miou_real, acc_real = _independent_miou(project, params)
    assert on_disk["miou_real"] == pytest.approx(miou_real) and on_disk["accuracy_real"] == pytest.approx(acc_real)
    # Trained on class colours, it reads real images far better than uniform noise.
    assert on_disk["accuracy_real"] > 0.8 and on_disk["miou_real"] > on_disk["miou_random"] + 0.3

    with (out / "per_class_iou.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["class", "name", "iou_generated", "iou_real"]
    assert {r["name"] for r in table} <= set(NAMES) and len(table) >= 2
    real_ious = [float(r["iou_real"]) for r in table if r["iou_real"]]
    assert np.mean(real_ious) == pytest.approx(on_disk["miou_real"], abs=1e-5)

    grid = np.asarray(Image.open(out / "samples.png"))
    assert grid.shape == (3 * SIZE + 2 * 2, 3 * SIZE + 2 * 2, 3)
    # third panel of the first row is the first real val image
    from gaugan.data import PreparedDataset

    first = PreparedDataset(root / params.data.out, "val", load_instances=False)[0]["image"]
    np.testing.assert_array_equal(grid[:SIZE, 2 * (SIZE + 2) :], first)

    logged = mlflow.MlflowClient(uri).get_run(run_id)
    assert logged.data.metrics["fid"] == pytest.approx(metrics["fid"])
    assert logged.data.metrics["miou_real"] == pytest.approx(metrics["miou_real"])
    assert logged.data.tags["fid_backbone"] == on_disk["backbone"]["name"]
    assert logged.data.tags["paper_comparable"] == "false"
    arts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id, "evaluate")}
    assert arts == {"evaluate/metrics.json", "evaluate/per_class_iou.csv", "evaluate/samples.png"}
    assert metrics["mlflow_run_id"] == run_id

    # A second evaluation reads the cached real features and gives the same numbers.
    again = run_evaluate(params, root)
    assert again["backbone"]["real_features_cached"] is True and metrics["backbone"]["real_features_cached"] is False
    for key in ("fid", "kid_mean", "kid_std", "miou", "miou_real", "miou_random"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-6), key


def test_evaluate_without_run_json_writes_files_and_says_nothing_was_logged(project, tmp_path, caplog):
    from pipeline.evaluation.stage import run_evaluate

    root = _link_project(tmp_path, project)
    params = tiny_params(max_images=4, stats_cache=None)
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation.stage"):
        metrics = run_evaluate(params, root)
    assert metrics["mlflow_run_id"] is None and metrics["num_images"] == 4
    assert "nothing was logged to MLflow" in caplog.text
    assert (root / params.evaluate.out_dir / "metrics.json").is_file()
    assert (root / params.evaluate.out_dir / "samples.png").is_file()


def test_generator_of_other_classes_is_refused_naming_both(project, tmp_path):
    from pipeline.evaluation.stage import EvaluationError, run_evaluate

    params = tiny_params()
    (tmp_path / "data").symlink_to(project / "data", target_is_directory=True)
    other = json.loads((project / params.data.out / "classes.json").read_text())
    other["dataset"] = "elsewhere"
    other["classes"][2]["name"] = "lava"
    write_tiny_generator(tmp_path / params.train.model_out, other)
    with pytest.raises(EvaluationError) as err:
        run_evaluate(params, tmp_path)
    msg = str(err.value)
    assert "class 2 is 'lava' in the generator but 'water' in the dataset" in msg
    assert "'elsewhere'" in msg and "'toy'" in msg and str(tmp_path / params.train.model_out) in msg


def test_empty_validation_split_is_an_error_not_nan(tmp_path):
    from pipeline.evaluation.stage import EvaluationError, run_evaluate

    params = tiny_params()
    write_prepared(tmp_path / params.data.out, n_train=3, n_val=0)
    with pytest.raises(EvaluationError, match="validation split is empty"):
        run_evaluate(params, tmp_path)


def test_inception_without_weights_fails_before_synthesis(project, tmp_path, monkeypatch):
    from pipeline.evaluation.features import FeatureWeightsError
    from pipeline.evaluation.stage import run_evaluate

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    root = _link_project(tmp_path, project)
    with pytest.raises(FeatureWeightsError, match="evaluate.feature_extractor: tiny"):
        run_evaluate(tiny_params(feature_extractor="inception"), root)
    assert not (root / "outputs").exists()


def test_style_encoder_models_use_the_real_image_or_a_seeded_draw(project, tmp_path):
    from pipeline.evaluation.stage import run_evaluate

    params = tiny_params(max_images=4, stats_cache=None)
    (tmp_path / "data").symlink_to(project / "data", target_is_directory=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "segmenter.pt").symlink_to(project / params.segmenter.out)
    classes = json.loads((project / params.data.out / "classes.json").read_text())
    write_tiny_generator(tmp_path / params.train.model_out, classes, use_vae=True, nef=4)

    real_a = run_evaluate(params, tmp_path)
    real_b = run_evaluate(params, tmp_path)
    drawn = run_evaluate(tiny_params(max_images=4, stats_cache=None, vae_style="random"), tmp_path)
    assert real_a["fid"] == real_b["fid"]  # seeded: the same numbers twice
    assert drawn["fid"] != real_a["fid"]  # style from the encoder of the real image vs a random z
