"""The evaluate stage end to end on a tiny prepared dataset: files, numbers, MLflow, refusals."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    TOY_NAMES,
    TOY_SIZE,
    make_params,
    write_project_params,
    write_tiny_generator,
    write_toy_prepared,
)
from PIL import Image

from gaugan.classes import ClassTable
from pipeline.errors import EvaluationError, FeatureWeightsError
from pipeline.stages.evaluate import run as run_evaluate
from pipeline.stages.train_segmenter import run as run_train_segmenter

SIZE = TOY_SIZE


def tiny_params(**evaluate) -> object:
    return make_params(tiny_override(**evaluate))


def tiny_override(**evaluate) -> dict:
    return {
        "seed": 1,
        "train": {"crop_size": SIZE, "load_size": SIZE},
        "segmenter": {"width": 8, "steps": 40, "batch_size": 8, "lr": 0.003, "device": "cpu"},
        "evaluate": {
            "feature_extractor": "tiny",
            "tiny_feature_dim": 64,
            "kid_subset_size": 4,
            "kid_subsets": 10,
            "fid_bootstrap": 20,
            "num_samples": 3,
            "batch_size": 4,
            "device": "cpu",
            **evaluate,
        },
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Prepared data, a trained tiny segmenter and a random tiny generator (shared, read-only)."""
    root = tmp_path_factory.mktemp("evalproj")
    params = tiny_params()
    write_toy_prepared(root / params.data.out)
    classes = ClassTable.load(root / params.data.out)
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
        assert isinstance(on_disk[key], int | float), key
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
    assert list(table[0]) == ["class", "name", "iou_generated", "iou_real", "pixels"]
    assert {r["name"] for r in table} <= set(TOY_NAMES) and len(table) >= 2
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
    assert logged.data.tags["eval_num_images"] == "6" and logged.data.tags["eval_dataset_id"] == on_disk["dataset_id"]
    assert logged.data.tags["eval_split_id"] == on_disk["val_split_id"] != on_disk["dataset_id"]
    assert logged.data.tags["segmenter_id"] == on_disk["segmenter"]["id"] and logged.data.tags["style_source"] == "none"
    assert "not the FID Inception" in logged.data.tags["paper_comparable_reasons"]
    arts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id, "evaluate")}
    names = ("metrics.json", "per_class_iou.csv", "confusion.npy", "confusion.csv", "samples.png")
    assert arts == {f"evaluate/{n}" for n in names}
    assert metrics["mlflow_run_id"] == run_id

    # What produced the numbers, and why they are not the paper's.
    assert on_disk["paper_comparable"] is False
    reasons = " | ".join(on_disk["paper_comparable_reasons"])
    assert "tiny-cnn" in reasons and "'toy' has no published protocol" in reasons
    assert on_disk["style_source"] == "none" and on_disk["precision_modes"]["device"] == "cpu"
    assert on_disk["precision_modes"]["generator"] == "fp32" and on_disk["comparability"]["eval_num_images"] == "6"
    assert (
        on_disk["segmenter"]["id"] == on_disk["comparability"]["segmenter_id"] and len(on_disk["segmenter"]["id"]) == 16
    )
    assert set(on_disk["timings"]) >= {"synthesis", "features", "segmentation", "fid", "kid", "fid_bootstrap"}
    # FID's bootstrap interval, KID's spread (6 images, subsets of 4), precision and recall
    assert 0 < on_disk["fid_ci_low"] < on_disk["fid_ci_high"] and on_disk["fid_bootstrap_replicates"] == 20
    assert on_disk["kid_std"] > 0 and 0 <= on_disk["precision"] <= 1 and 0 <= on_disk["recall"] <= 1
    assert on_disk["lpips_diversity"] is None  # a model without a style encoder
    # the confusion matrix: rows = ground truth; its diagonal and row sums give the per-class table
    cm = np.load(out / "confusion.npy")
    assert cm.shape == (4, 4) and cm.dtype == np.int64
    for row in table:
        c = int(row["class"])
        assert int(row["pixels"]) == cm[c].sum()
        if row["iou_generated"]:
            iou = cm[c, c] / (cm[c].sum() + cm[:, c].sum() - cm[c, c])
            assert float(row["iou_generated"]) == pytest.approx(iou, abs=1e-6)
    with (out / "confusion.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["truth \\ prediction", *TOY_NAMES] and [int(v) for v in rows[1][1:]] == cm[0].tolist()

    # A second evaluation reads the cached real features and gives the same numbers.
    again = run_evaluate(params, root)
    assert again["backbone"]["real_features_cached"] is True and metrics["backbone"]["real_features_cached"] is False
    for key in ("fid", "kid_mean", "kid_std", "miou", "miou_real", "miou_random"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-6), key


def test_evaluate_without_run_json_writes_files_and_says_nothing_was_logged(project, tmp_path, caplog):

    root = _link_project(tmp_path, project)
    params = tiny_params(max_images=4, stats_cache=None)
    with caplog.at_level(logging.WARNING, logger="pipeline.tracking"):
        metrics = run_evaluate(params, root)
    assert metrics["mlflow_run_id"] is None and metrics["num_images"] == 4
    # 4 images and subsets of 4: every subset would be the whole set, so no spread is reported
    assert metrics["kid_std"] is None and metrics["kid_subset_size"] == 4 and metrics["kid_mean"] is not None
    on_disk = json.loads((root / params.evaluate.out_dir / "metrics.json").read_text())
    assert on_disk["kid_std"] is None and on_disk["kid_subsets"] == 1
    assert "nothing was logged to MLflow" in caplog.text
    assert (root / params.evaluate.out_dir / "metrics.json").is_file()
    assert (root / params.evaluate.out_dir / "samples.png").is_file()


def test_generator_of_other_classes_is_refused_naming_both(project, tmp_path):

    params = tiny_params()
    (tmp_path / "data").symlink_to(project / "data", target_is_directory=True)
    data_classes = ClassTable.load(project / params.data.out)
    names = list(data_classes.names)
    names[2] = "lava"
    other = dataclasses.replace(data_classes, dataset="elsewhere", names=tuple(names))
    write_tiny_generator(tmp_path / params.train.model_out, other)
    with pytest.raises(EvaluationError) as err:
        run_evaluate(params, tmp_path)
    msg = str(err.value)
    assert "class 2 is 'lava' vs 'water' (generator vs dataset)" in msg
    assert "'elsewhere'" in msg and "'toy'" in msg and str(tmp_path / params.train.model_out) in msg


def test_empty_validation_split_is_an_error_not_nan(tmp_path):

    params = tiny_params()
    write_toy_prepared(tmp_path / params.data.out, n_train=3, n_val=0)
    with pytest.raises(EvaluationError, match="validation split is empty"):
        run_evaluate(params, tmp_path)


def test_inception_without_weights_fails_before_synthesis(project, tmp_path, monkeypatch):

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    root = _link_project(tmp_path, project)
    with pytest.raises(FeatureWeightsError, match="evaluate.feature_extractor: tiny"):
        run_evaluate(tiny_params(feature_extractor="inception"), root)
    assert not (root / "outputs").exists()


def test_fid_does_not_depend_on_the_batch_size_for_a_vae_model(project, tmp_path):
    params = tiny_params(stats_cache=None, fid_bootstrap=0)
    (tmp_path / "data").symlink_to(project / "data", target_is_directory=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "segmenter.pt").symlink_to(project / params.segmenter.out)
    classes = ClassTable.load(project / params.data.out)
    write_tiny_generator(tmp_path / params.train.model_out, classes, use_vae=True, nef=4)
    fids = {}
    for style in ("random", "real"):
        runs = [
            run_evaluate(
                tiny_params(stats_cache=None, fid_bootstrap=0, max_images=5, vae_style=style, batch_size=bs), tmp_path
            )
            for bs in (2, 5)
        ]
        for key in ("fid", "kid_mean", "miou", "precision", "recall"):
            assert runs[1][key] == pytest.approx(runs[0][key], rel=1e-4, abs=1e-6), (style, key)
        assert runs[0]["style_source"] == {"random": "random", "real": "encoded-real"}[style]
        fids[style] = runs[0]["fid"]
    assert fids["random"] != pytest.approx(fids["real"], rel=1e-3)  # the real photo's code vs a seeded draw
    # the style source decides paper-comparability: an encoded real photo makes FID a reconstruction score
    assert any("reconstruction score" in r for r in runs[0]["paper_comparable_reasons"])


def test_evaluate_model_scores_another_file_and_logs_into_that_models_own_run(project, tmp_path, monkeypatch):
    """`evaluate --model FILE --out-dir DIR`: an imported model's scores go to its import run, never
    into the training run of run.json; one without a run of its own is logged nowhere."""
    import mlflow
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.tracking import RunRef, ensure_experiment, write_run_ref

    root = _link_project(tmp_path, project)
    override = tiny_override(max_images=4, stats_cache=None)
    params = make_params(override)
    write_project_params(root, override)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = ensure_experiment("gaugan-toy", uri)
    training, imported = (client.create_run(experiment).info.run_id for _ in range(2))
    write_run_ref(root / params.train.out_dir / "run.json", RunRef(training, uri, "gaugan-toy"))
    classes = ClassTable.load(project / params.data.out)
    meta = {"source": "reference", "run_id": imported, "tracking_uri": uri, "experiment": "gaugan-toy"}
    write_tiny_generator(root / "imported.pt", classes, seed=4, meta=meta)
    write_tiny_generator(root / "unregistered.pt", classes, seed=5, meta={"source": "reference"})
    monkeypatch.chdir(root)
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--model", "imported.pt", "--out-dir", "outputs/eval-imported"])
    assert result.exit_code == 0, result.output
    scored = json.loads((root / "outputs/eval-imported/metrics.json").read_text())
    assert scored["generator"]["file"] == "imported.pt"
    assert not (root / params.evaluate.out_dir).exists()  # the pipeline's own report is left alone
    assert client.get_run(imported).data.metrics["fid"] == pytest.approx(scored["fid"])
    assert "fid" not in client.get_run(training).data.metrics

    result = runner.invoke(app, ["evaluate", "--model", "unregistered.pt", "--out-dir", "outputs/eval-other"])
    assert result.exit_code == 0, result.output
    assert (root / "outputs/eval-other/metrics.json").is_file() and "nothing was logged" in result.output
    assert "fid" not in client.get_run(training).data.metrics


def test_lpips_diversity_needs_the_real_backbone_file_and_says_which(project, tmp_path, monkeypatch):
    import torchvision

    from pipeline.evaluation.diversity import LPIPS_BACKBONES

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    params = tiny_params(stats_cache=None, fid_bootstrap=0, diversity_net="squeeze", diversity_maps=3)
    (tmp_path / "data").symlink_to(project / "data", target_is_directory=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "segmenter.pt").symlink_to(project / params.segmenter.out)
    classes = ClassTable.load(project / params.data.out)
    write_tiny_generator(tmp_path / params.train.model_out, classes, use_vae=True, nef=4)
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    with pytest.raises(FeatureWeightsError) as err:
        run_evaluate(params, tmp_path)
    assert LPIPS_BACKBONES["squeeze"] in str(err.value) and str(hub) in str(err.value)
    assert "evaluate.diversity_net: null" in str(err.value)
    assert not (tmp_path / "outputs").exists()  # refused before any synthesis

    # With a file at that place the mechanism runs; this one is a stand-in, and the record says so.
    hub.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), hub / LPIPS_BACKBONES["squeeze"])
    first = run_evaluate(params, tmp_path)
    again = run_evaluate(params, tmp_path)
    assert first["lpips_diversity"] > 0 and again["lpips_diversity"] == pytest.approx(first["lpips_diversity"])
    assert first["diversity"]["official_weights"] is False and first["diversity"]["maps"] == 3
    assert len(first["diversity"]["backbone_sha256"]) == 64
