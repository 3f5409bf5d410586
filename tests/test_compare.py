"""``gaugan-pipeline compare A B`` against a real SQLite MLflow store: what the report says and holds."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TOY_NAMES, write_tiny_generator, write_toy_prepared
from PIL import Image

from gaugan.classes import ClassTable
from pipeline.errors import ModelNotFoundError
from pipeline.reports.compare import build_report


def _metrics(fid: float, miou: float, segmenter: str, dataset_id: str) -> dict:
    return {
        "fid": fid,
        "fid_ci_low": fid * 0.9,
        "fid_ci_high": fid * 1.2,
        "kid_mean": fid / 100,
        "kid_std": None,
        "precision": 0.5,
        "recall": 0.4,
        "miou": miou,
        "accuracy": 0.8,
        "num_images": 6,
        "height": 32,
        "width": 32,
        "paper_comparable": False,
        "paper_comparable_reasons": ["the dataset 'toy' has no published protocol"],
        "dataset": "toy",
        "dataset_id": dataset_id,
        "style_source": "none",
        "backbone": {"name": "tiny-cnn-seed20190318-d64"},
        "segmenter": {"arch": "unet-small", "id": segmenter},
        "comparability": {
            "eval_dataset_id": dataset_id,
            "eval_split_id": f"val-of-{dataset_id}",
            "eval_num_images": "6",
            "eval_resolution": "32x32",
            "style_source": "none",
            "fid_backbone": "tiny-cnn-seed20190318-d64",
            "segmenter_id": segmenter,
        },
    }


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _logged_run(client, experiment: str, root: Path, seed: int, metrics: dict, ious: list[float]) -> str:
    """A run as train, evaluate and register leave it: losses, evaluation files, the generator file."""
    run = client.create_run(experiment, run_name=f"train-{seed}")
    folder = root / f"run{seed}"
    for sub in ("train", "evaluate", "checkpoint"):
        (folder / sub).mkdir(parents=True)
    steps = [[s, 2.0 - s / (10 + seed), 1.0 + s / 50, "", "", 0.5, 0.6, "", "", 20] for s in range(0, 50, 10)]
    head = ["step", "G_GAN", "G_GAN_Feat", "G_VGG", "KLD", "D_Fake", "D_real", "lr_G", "lr_D", "images_per_sec"]
    (folder / "train/losses.csv").write_text(_csv([head, *steps]))
    (folder / "evaluate/metrics.json").write_text(json.dumps(metrics))
    rows = [["class", "name", "iou_generated", "iou_real", "pixels"]]
    rows += [[c, TOY_NAMES[c], v, 0.9, 100] for c, v in enumerate(ious)]
    (folder / "evaluate/per_class_iou.csv").write_text(_csv(rows))
    write_tiny_generator(folder / "checkpoint/generator.pt", ClassTable.load(root / "data"), seed=seed)
    for sub in ("train", "evaluate", "checkpoint"):
        for f in (folder / sub).iterdir():
            client.log_artifact(run.info.run_id, str(f), artifact_path=sub)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow

    root = tmp_path_factory.mktemp("compare")
    write_toy_prepared(root / "data", n_train=2, n_val=4)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("gaugan-toy", artifact_location=(root / "artifacts").as_uri())
    run_a = _logged_run(client, experiment, root, 1, _metrics(40.0, 0.30, "seg-a", "data-1"), [0.2, 0.5, 0.3, 0.1])
    run_b = _logged_run(client, experiment, root, 2, _metrics(30.0, 0.45, "seg-b", "data-1"), [0.4, 0.4, 0.6, 0.2])
    client.create_registered_model("gaugan-toy")
    client.create_model_version("gaugan-toy", f"runs:/{run_b}/checkpoint", run_id=run_b)
    client.set_registered_model_alias("gaugan-toy", "champion", "1")
    return root, uri, run_a, run_b


def test_compare_report_of_a_run_and_a_registered_alias(store, tmp_path):
    import mlflow

    root, uri, run_a, run_b = store
    html = build_report(run_a, "models:/gaugan-toy@champion", uri, tmp_path / "out", data_root=root / "data", maps=3)
    assert html == tmp_path / "out" / f"run-{run_a[:8]}-vs-gaugan-toy-v1-champion" / "report.html"
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 3  # IoU chart, samples, losses: all inside the one file
    assert run_a in page and run_b in page and "registered version 1" in page

    summary = json.loads((html.parent / "compare.json").read_text())
    rows = {r["key"]: r for r in summary["metrics"]}
    # FID: same data, images, size, style and backbone: compared, B is better (lower)
    assert rows["fid"]["comparable"] is True and rows["fid"]["better"] == "B"
    assert rows["fid"]["a"] == 40.0 and rows["fid"]["b"] == 30.0
    # mIoU: scored by different segmenters: not compared, and the report says why
    assert rows["miou"]["comparable"] is False and rows["miou"]["better"] == ""
    assert rows["miou"]["why_not"] == "segmenter_id is 'seg-a' for A and 'seg-b' for B"
    assert "segmenter_id is &#x27;seg-a&#x27; for A and &#x27;seg-b&#x27; for B" in page
    assert "kid_std" not in rows and summary["a"]["paper_comparable_reasons"]  # null on both sides: no row
    diffs = {r["name"]: r["difference"] for r in summary["per_class_iou"]}
    assert diffs == pytest.approx({"sky": 0.2, "grass": -0.1, "water": 0.3, "sand": 0.1})
    assert summary["a"]["missing"] == [] and summary["b"]["version"] == "1"

    # The same validation maps rendered by both generators: label | A | B | real
    grid = np.asarray(Image.open(html.parent / "samples.png"))
    size, gap = 32, 2
    assert grid.shape == (3 * size + 2 * gap, 4 * size + 3 * gap, 3)
    from gaugan.data import PreparedDataset

    first = PreparedDataset(root / "data", "val", load_instances=False)[0]
    classes = ClassTable.load(root / "data")
    np.testing.assert_array_equal(grid[:size, :size], classes.colorize(first["label"]))
    np.testing.assert_array_equal(grid[:size, 3 * (size + gap) :], first["image"])
    panel_a, panel_b = grid[:size, size + gap : 2 * size + gap], grid[:size, 2 * (size + gap) : 3 * size + 2 * gap]
    assert not np.array_equal(panel_a, panel_b)  # two different generators
    assert Image.open(html.parent / "losses.png").size[0] > 300

    # logged to MLflow as artifacts of a run in the compare experiment
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("gaugan-compare")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.data.tags["compare_a"] == run_a and logged.data.tags["compare_b"] == run_b
    names = {a.path for a in client.list_artifacts(logged.info.run_id, "compare")}
    assert {"compare/report.html", "compare/samples.png", "compare/compare.json"} <= names


def test_compare_names_what_does_not_exist(store, tmp_path):
    root, uri, run_a, _ = store
    with pytest.raises(ModelNotFoundError, match=r"no alias 'production'.*@champion \(version 1\)"):
        build_report(run_a, "models:/gaugan-toy@production", uri, tmp_path, log_to_mlflow=False)
    with pytest.raises(ModelNotFoundError, match="not a model reference"):
        build_report(run_a, "latest", uri, tmp_path, log_to_mlflow=False)
    with pytest.raises(ModelNotFoundError, match="no MLflow run 0{32}"):
        build_report(run_a, "0" * 32, uri, tmp_path, log_to_mlflow=False)
