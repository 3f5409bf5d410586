"""The real tools, end to end, on a tiny setting: dvc repro in a temporary copy of the project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import copy_project, write_project_params

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = [
    "gaugan", "pipeline", "weights", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", ".gitignore",
]  # fmt: skip

TINY = {
    "data": {"workers": 1, "demo": {"num_train": 16, "num_val": 6, "width": 64, "height": 64}},
    "model": {"ngf": 4, "ndf": 4, "nef": 4, "z_dim": 8, "spade_hidden": 8, "n_layers_D": 2},
    "train": {
        "batch_size": 4,
        "max_steps": 3,
        "decay_start_step": None,
        "load_size": 72,
        "crop_size": 64,
        "num_workers": 0,
        "checkpoint_every": 2,
        "log_every": 1,
        "sample_every": 3,
        "device": "cpu",
    },
    "segmenter": {"steps": 3, "width": 4, "batch_size": 4, "device": "cpu"},
    "evaluate": {
        "feature_extractor": "tiny",
        "tiny_feature_dim": 16,
        "kid_subset_size": 3,
        "batch_size": 4,
        "device": "cpu",
        "num_samples": 2,
    },
    "register": {"bootstrap": 200},
    "retrain": {
        "finetune_steps": 40,
        "finetune_decay_start_step": 20,
        "scratch_steps": 3,
        "scratch_decay_start_step": None,
    },
}


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    root = copy_project(tmp_path_factory.mktemp("project"), PROJECT_FILES)
    write_project_params(root, TINY)
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        OMP_NUM_THREADS="1",
        PREFECT_HOME=str(root / ".prefect"),
    )
    subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo-data", "--out", "data/raw/demo"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )
    return root, env


def _dvc(project: tuple[Path, dict], *args: str, ok: bool = True) -> str:
    root, env = project
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True, timeout=900
    )
    out = proc.stdout + proc.stderr
    if ok:
        assert proc.returncode == 0, out[-5000:]
    else:
        assert proc.returncode != 0, out[-5000:]
    return out


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def _registered_versions(root: Path, name: str) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return sorted(v.version for v in client.search_model_versions(f"name='{name}'"))


@pytest.mark.slow
def test_dvc_repro_end_to_end_then_noop_then_only_what_changed(project):
    root, _ = project
    out = _dvc(project, "repro")
    assert _ran(out) == {"ingest", "resolve-parent", "train", "train-segmenter", "evaluate", "register"}
    registration = json.loads((root / "outputs/register/registration.json").read_text())
    assert registration["promoted"] is True and registration["version"] in ("1", 1)
    metrics = json.loads((root / "outputs/evaluate/metrics.json").read_text())
    assert metrics["fid"] >= 0 and 0 <= metrics["miou"] <= 1
    shown = _dvc(project, "metrics", "show")
    assert "fid" in shown and "miou" in shown

    again = _dvc(project, "repro")  # resolve-parent runs every time (always_changed); its output is the same
    assert _ran(again) == {"resolve-parent"}
    assert "Stage 'train' didn't change, skipping" in again

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["num_samples"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = _dvc(project, "repro")
    assert "evaluate" in _ran(changed)
    assert not _ran(changed) & {"ingest", "train", "train-segmenter"}
    assert "evaluate.num_samples" in _dvc(project, "params", "diff")

    # code is a dependency too: a change to the registry code reruns register, and only register
    with (root / "pipeline/registry.py").open("a") as fh:
        fh.write("\n# a change\n")
    assert _ran(_dvc(project, "repro")) == {"resolve-parent", "register"}


@pytest.mark.slow
def test_a_failing_stage_leaves_outputs_and_registry_as_they_were(project):
    root, _ = project
    if not (root / "outputs/register/registration.json").exists():
        _dvc(project, "repro")
    before_metrics = (root / "outputs/evaluate/metrics.json").read_bytes()
    before_registration = (root / "outputs/register/registration.json").read_bytes()
    name = json.loads(before_registration)["name"]
    versions = _registered_versions(root, name)

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["feature_extractor"] = "inception"  # no weights file here: the stage must refuse
    params["evaluate"]["inception_weights"] = str(root / "missing-inception.pth")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _dvc(project, "repro", ok=False)
    assert "evaluate" in out and "missing-inception.pth" in out
    assert (root / "outputs/evaluate/metrics.json").read_bytes() == before_metrics
    assert (root / "outputs/register/registration.json").read_bytes() == before_registration
    assert _registered_versions(root, name) == versions


@pytest.mark.slow
def test_prefect_flows_run_the_same_pipeline_and_retrain_on_new_data(project):
    root, env = project
    if not (root / "outputs/register/registration.json").exists():
        _dvc(project, "repro")
    # restore the parameters the failure test may have changed
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["feature_extractor"] = "tiny"
    params["evaluate"]["inception_weights"] = None
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def cli(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *args, "--repo", str(root)],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
        return proc.stdout + proc.stderr

    # the first retraining (no snapshot yet: every file is new) fine-tunes the champion of `dvc repro`
    # (3 steps) for retrain.finetune_steps: clearly better on the same validation images, promoted
    champion_before = _champion_version(root)
    first = cli("flow", "retrain")
    assert "running the pipeline" in first and "Finished in state Completed" in first
    assert "retraining: fine-tuning models:/gaugan-demo@champion" in first
    assert "train.init_from: None -> models:/gaugan-demo@champion" in first
    first_reg = _registration(root)
    assert first_reg["promoted"] is True, first_reg["reason"]
    assert first_reg["comparison"]["champion_evidence"] == "its stored evidence"  # nothing changed but the model
    assert first_reg["comparison"]["ci_low"] > 0
    assert _version_tags(root, first_reg)["parent_version"] == str(champion_before)
    assert _champion_version(root) == first_reg["version"]
    assert "nothing to do" in cli("flow", "retrain")

    # a data drop: new training samples, some of a class the champion never saw; validation untouched
    from pipeline.datasets.demo import add_demo_drop
    from pipeline.params import load_params

    add_demo_drop(root / "data/raw/demo", load_params(root / "params.yaml").data.demo, 4, "fence", seed=1)
    third = cli("flow", "retrain")
    assert "12 added, 1 changed, 0 removed" in third  # 4 x image, label, instance map; classes.json
    assert "Running stage 'ingest'" in third and "Running stage 'train-segmenter'" in third
    stats = json.loads((root / "data/prepared/stats.json").read_text())
    assert stats["processed_this_run"] == 4  # incremental: only the new samples were prepared
    reg = _registration(root)
    assert reg["version"] == first_reg["version"] + 1
    assert _version_tags(root, reg)["parent_version"] == str(first_reg["version"])  # the champion of the moment
    comparison = reg["comparison"]  # compared on the same images, the champion scored again by today's segmenter
    assert comparison["champion_version"] == first_reg["version"]
    assert comparison["champion_evidence"].startswith("scored again now") and "segmenter_id" in reg["reason"]
    assert "not comparable" not in reg["reason"] and "interval" in reg["reason"]
    from gaugan.checkpoint import load_generator

    grown = load_generator(root / "models/generator.pt")
    assert grown.config.label_nc == 13 and grown.classes is not None and grown.classes.names[-1] == "fence"
    summary = json.loads((root / ".gaugan/retrain_summary.json").read_text())
    assert summary["started_from"].startswith(f"models:/gaugan-demo@champion = version {first_reg['version']}")
    assert summary["decision"].startswith(f"version {reg['version']} of gaugan-demo")
    assert "nothing to do" in cli("flow", "retrain")


def _registration(root: Path) -> dict:
    registration = json.loads((root / "outputs/register/registration.json").read_text())
    registration["version"] = int(registration["version"])
    return registration


def _champion_version(root: Path) -> int:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return int(client.get_registered_model("gaugan-demo").aliases["champion"])


def _version_tags(root: Path, registration: dict) -> dict:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return dict(client.get_model_version(registration["name"], str(registration["version"])).tags)


@pytest.mark.slow
def test_dvc_exp_run_with_a_set_parameter_and_plots(project):
    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["feature_extractor"] = "tiny"  # the failure test may have left inception
    params["evaluate"]["inception_weights"] = None
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _dvc(project, "repro")
    _git(root, "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline")

    out = _dvc(
        project, "exp", "run", "-S", "train.max_steps=4", "-S", "train.decay_start_step=null", "--name", "longer"
    )
    assert {"train", "evaluate", "register"} <= _ran(out) and "ingest" not in _ran(out)
    losses = (root / "outputs/train/losses.csv").read_text().splitlines()
    assert losses[-1].split(",")[0] == "4"  # the experiment trained to the new max_steps
    shown = _dvc(project, "exp", "show", "--csv")
    assert "longer" in shown and "train.max_steps" in shown

    plots = json.loads(_dvc(project, "plots", "show", "--json"))["data"]
    assert {"losses", "throughput", "outputs/train/losses.csv", "outputs/evaluate/per_class_iou.csv"} <= set(plots)
