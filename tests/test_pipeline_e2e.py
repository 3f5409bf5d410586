"""The real tools, end to end, on a tiny setting: dvc repro in a temporary copy of the project."""

from __future__ import annotations

import json
import os
import re
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
    "segmenter": {"steps": 3, "continue_steps": 3, "width": 4, "batch_size": 4, "device": "cpu"},
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
    # the raw source versioned with DVC, as `gaugan-pipeline demo` does, and committed
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "data/raw/demo"], cwd=root, env=env, check=True)
    _git(root, "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the demo source")
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
    with (root / "pipeline/registry/versions.py").open("a") as fh:
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


def _cli(project: tuple[Path, dict], *args: str) -> str:
    root, env = project
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=root, env=env, capture_output=True, text=True, timeout=900
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "database is locked" not in out and "Traceback" not in out, out[-5000:]
    return out


def _restore_baseline(project: tuple[Path, dict]) -> None:
    """What earlier tests changed put back (the registry code, the failure's params), run and committed."""
    root, _ = project
    _git(root, "checkout", "--", "pipeline/registry/versions.py")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["feature_extractor"] = "tiny"
    params["evaluate"]["inception_weights"] = None
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _dvc(project, "repro")
    _git(root, "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline")


@pytest.mark.slow
def test_a_retraining_is_one_ref_that_dvc_repro_and_a_fresh_clone_reproduce(project, tmp_path_factory):
    """demo -> a drop -> flow retrain (promoted): pinned parent, one commit tagged with the version and
    pushed with the data; `dvc repro` then trains and registers nothing; a fresh clone at the version's
    ref pulls, is up to date, and retraining it gives the registered generator's weights (CPU)."""
    root, env = project
    _restore_baseline(project)
    remotes = tmp_path_factory.mktemp("remotes")
    _git(remotes, "init", "-q", "--bare", "origin.git")
    _git(root, "remote", "add", "origin", str(remotes / "origin.git"))
    _dvc(project, "remote", "add", "-d", "store", str(remotes / "dvc-store"))
    _git(root, "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "remotes")
    champion_before = _champion_version(root)

    # a data drop, as a team's upload: new training samples, some of a class the champion never saw
    dropped = _cli(project, "demo-data", "--out", "data/raw/demo", "--drop", "4", "--new-class", "fence")
    assert "data/raw/demo.dvc (dvc add)" in dropped
    out = _cli(project, "flow", "retrain", "--repo", str(root))
    assert "12 added, 1 changed, 0 removed" in out  # 4 x image, label, instance map; classes.json
    pinned = f"models:/gaugan-demo/{champion_before}"
    assert f"train.init_from: None -> {pinned}" in out
    assert "Running stage 'ingest'" in out
    # the two training stages side by side (2 cores), recorded by `dvc commit`
    assert "running train, train-segmenter side by side" in out
    assert re.search(r"stages: ingest ran .*, train ran .*, train-segmenter ran .*, evaluate ran", out)
    assert "stages: register ran" in out  # last, once the rest is pushed
    stats = json.loads((root / "data/prepared/stats.json").read_text())
    assert stats["processed_this_run"] == 4  # incremental: only the new samples were prepared
    segmenter = json.loads((root / "outputs/segmenter/metrics.json").read_text())
    assert segmenter["continued_from_parent"] is True and segmenter["steps"] == TINY["segmenter"]["continue_steps"]
    params = (root / "params.yaml").read_text()
    assert f"init_from: {pinned}" in params and "pinned from models:/gaugan-demo@champion" in params
    reg = _registration(root)
    assert reg["promoted"] is True, reg["reason"]
    assert _champion_version(root) == reg["version"]
    summary = json.loads((root / ".gaugan/retrain_summary.json").read_text())
    assert {"ingest", "train", "train-segmenter", "evaluate", "register", "total"} <= set(summary["seconds"])

    # the result is one commit, tagged with the version, pushed with its data; the version names it
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    assert status == "", status
    committed = subprocess.run(
        ["git", "show", "--name-only", "--format=", "HEAD"], cwd=root, capture_output=True, text=True
    )
    assert {"params.yaml", "dvc.lock", "data/raw/demo.dvc"} <= set(committed.stdout.split())
    tags = _version_tags(root, reg)
    assert tags["git_ref"] == head and tags["git_tag"] == f"model/gaugan-demo/{reg['version']}"
    assert tags["parent_version"] == str(champion_before)
    assert tags["parent_pinned_from"] == "models:/gaugan-demo@champion"
    remote_tag = subprocess.run(
        ["git", "rev-parse", f"{tags['git_tag']}^{{commit}}"],
        cwd=remotes / "origin.git",
        capture_output=True,
        text=True,
    )
    assert remote_tag.stdout.strip() == head

    # `dvc repro` right after: the pinned parent resolves to the same version, nothing trains or registers
    versions = _registered_versions(root, "gaugan-demo")
    assert _ran(_dvc(project, "repro")) == {"resolve-parent"}
    assert _registered_versions(root, "gaugan-demo") == versions
    assert "nothing to do" in _cli(project, "flow", "retrain", "--repo", str(root))

    # a fresh clone (of the project, data and models from the DVC remote) at the version's ref
    work = tmp_path_factory.mktemp("reproduce") / "clone"
    report = json.loads(_reproduce_json(project, reg["model_uri"], work))
    assert report["ref"] == head and "DVC remote 'store'" in report["data_from"]
    assert report["up_to_date"] is True, report["stale"]
    assert report["identical"] is True, report


def _reproduce_json(project: tuple[Path, dict], model_uri: str, work: Path) -> str:
    root, _ = project
    out = _cli(project, "reproduce", model_uri, "--repo", str(root), "--workdir", str(work), "--force")
    return out[out.index("{\n") : out.rindex("}") + 1]


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


@pytest.mark.slow
def test_a_sweep_of_queued_experiments_gives_one_named_run_and_one_registration_each(project):
    """`dvc exp run --queue` twice, `dvc queue start -j 2`: both run at once in DVC's copies of the
    project (the raw data comes from DVC's cache); each is one MLflow run named after it, with its own
    metrics, and one registration with its decision; `dvc exp show` lists their FID and mIoU."""
    import time

    import mlflow

    root, _ = project
    _restore_baseline(project)
    before = _registered_versions(root, "gaugan-demo")
    for name, lr in (("lr-a", "0.0001"), ("lr-b", "0.0004")):
        _dvc(project, "exp", "run", "--queue", "-n", name, "-S", f"train.lr={lr}", "-S", "train.max_steps=4")
    _dvc(project, "queue", "start", "-j", "2")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = _dvc(project, "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert status.count("Success") >= 2 and "Failed" not in status, status + _dvc(
        project, "queue", "logs", "lr-a", ok=False
    )

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gaugan-demo")
    runs = {
        r.info.run_name: r
        for r in client.search_runs([experiment.experiment_id])
        if r.info.run_name in ("lr-a", "lr-b")
    }
    assert set(runs) == {"lr-a", "lr-b"}
    assert runs["lr-a"].data.params["train.lr"] == "0.0001" and runs["lr-b"].data.params["train.lr"] == "0.0004"
    for run in runs.values():
        assert "fid" in run.data.metrics and run.data.tags["dvc_exp"] == run.info.run_name
        assert run.data.tags.get("dvc_baseline")
    versions = client.search_model_versions("name='gaugan-demo'")
    new = [v for v in versions if v.version not in before]
    assert sorted(v.run_id for v in new) == sorted(r.info.run_id for r in runs.values())
    assert all(v.tags["validation_status"] in ("champion", "challenger") for v in new)
    shown = _dvc(project, "exp", "show", "--csv")
    assert "lr-a" in shown and "lr-b" in shown and "fid" in shown and "miou" in shown
