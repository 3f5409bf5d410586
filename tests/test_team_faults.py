"""Faults of the team set-up, each provoked for real, each ending as designed with nothing lost.

- an MLflow server that is down when a stage starts: the stage stops at once, naming the URI,
  before any training (train, evaluate, register);
- the MLflow server restarted in the middle of training (the session's server, on PostgreSQL):
  the client retries, training goes on, the run finishes with every metric and file;
- the tracking server gone for longer than the client's retries: records wait, training goes on;
- two ``dvc repro`` at once in one workspace: one stops with DVC's lock message (or, as the flows
  run it, waits), and the workspace is consistent;
- two register stages racing on one registered model: they take turns, one champion results.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import deep_merge, ingest_dataset, write_project_params
from team_stack import TeamStack, base_env, free_port
from test_registry import fake_training
from test_registry import params as register_params
from test_train import TINY_PARAMS

from pipeline.errors import TrackingError
from pipeline.params import load_params


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults-prepared")
    ingest_dataset("demo", root / "unused", root / "data", workers=1, demo=TINY_PARAMS["data"]["demo"])
    return root / "data"


def project(root: Path, prepared: Path, **override) -> Path:
    """A working folder: params.yaml (the tiny settings of test_train) and a link to the prepared data."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "prepared").symlink_to(prepared, target_is_directory=True)
    write_project_params(root, deep_merge(TINY_PARAMS, override))
    return root


# ------------------------------------------------------------------------------------------------
# a server that is down when the stage starts


def test_a_tracking_server_that_is_down_stops_each_stage_at_once_naming_it(prepared, tmp_path, monkeypatch):
    from gaugan.trainer import GauGANTrainer
    from pipeline.stages import evaluate, register, train
    from pipeline.tracking import RunRef, write_run_ref

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    root = project(tmp_path, prepared, mlflow={"tracking_uri": dead})
    steps = []
    monkeypatch.setattr(GauGANTrainer, "train_step", lambda self, batch: steps.append(1))
    params = load_params(root / "params.yaml")
    started = time.monotonic()
    with pytest.raises(TrackingError, match=rf"tracking server at {dead} is not reachable.*nothing was trained"):
        train.run(params, root)
    assert time.monotonic() - started < 10 and steps == []
    assert not (root / "runs").exists() and not (root / "outputs").exists() and not (root / "models").exists()
    # evaluate and register: the server of the training run (run.json) is checked before any work
    write_run_ref(root / "outputs/train/run.json", RunRef("0" * 32, dead, "gaugan-demo"))
    for stage in (evaluate, register):
        started = time.monotonic()
        with pytest.raises(TrackingError, match=rf"tracking server at {dead} is not reachable"):
            stage.run(params, root)
        assert time.monotonic() - started < 10
    assert sorted(p.name for p in (root / "outputs").rglob("*") if p.is_file()) == ["run.json"]


# ------------------------------------------------------------------------------------------------
# a server restart while training


def test_a_server_restart_during_training_loses_nothing(team_stack: TeamStack, prepared, tmp_path):
    import mlflow

    steps = 12
    root = project(
        tmp_path,
        prepared,
        train={"max_steps": steps, "log_every": 1, "sample_every": 6, "checkpoint_every": 6},
        mlflow={"tracking_uri": team_stack.mlflow_url, "experiment": "gaugan-restart"},
    )
    # the client's own retries (7), with a shorter back-off than MLflow's default (2) to keep the test short
    env = base_env(MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "--params", "params.yaml"]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = mlflow.MlflowClient(team_stack.mlflow_url)
    run_json = root / "outputs/train/run.json"
    deadline = time.monotonic() + 300
    while not (
        run_json.is_file() and len(client.get_metric_history(json.loads(run_json.read_text())["run_id"], "G_GAN")) >= 2
    ):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    team_stack.mlflow.stop()  # SIGTERM to the server's process group, in the middle of training
    stopped = time.monotonic()
    assert proc.poll() is None  # still training
    team_stack.mlflow.start().wait_healthy()
    print(f"MLflow server down for {time.monotonic() - stopped:.1f} s during training")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    run_id = json.loads(run_json.read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(run_id, "G_GAN")}) == list(range(1, steps + 1))
    samples = sorted(a.path for a in client.list_artifacts(run_id, "samples"))
    assert samples == ["samples/samples.png", "samples/step_0000006.png", "samples/step_0000012.png"]
    experiment = client.get_experiment_by_name("gaugan-restart").experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment])] == [run_id]  # the same run, not a new one


def test_records_wait_while_the_server_stays_down_and_training_goes_on(team_stack, monkeypatch):
    """Past the client's retries, the tracker keeps records in order, asks /health only, and sends
    everything once the server answers (here: the client's calls are made to fail for a while)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    import pipeline.tracking as tracking

    uri = team_stack.mlflow_url
    tracker = tracking.Tracker(uri, "gaugan-outage")
    run_id = tracker.start(None, {"train": {"max_steps": 6}}, {})
    down = {"on": False}
    real_log = mlflow.log_metrics

    def flaky_log(metrics, step=None, **kw):
        if down["on"]:
            raise MlflowException("API request to http://tracking:5000 failed: Connection refused")
        return real_log(metrics, step=step, **kw)

    probes = []
    monkeypatch.setattr(mlflow, "log_metrics", flaky_log)
    monkeypatch.setattr(
        tracking, "server_problem", lambda uri, timeout=5.0: probes.append(uri) or ("down" if down["on"] else None)
    )
    tracker.log_metrics({"loss": 1.0}, 1)
    down["on"] = True
    for step in (2, 3, 4):  # training goes on: no exception, the records wait
        tracker.log_metrics({"loss": float(step)}, step)
    assert len(tracker.pending) == 3 and len(probes) == 2  # after the first failure, only /health is asked
    down["on"] = False
    tracker.log_metrics({"loss": 5.0}, 5)
    assert not tracker.pending
    tracker.end("FINISHED")
    history = mlflow.MlflowClient(uri).get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(s, float(s)) for s in range(1, 6)]


# ------------------------------------------------------------------------------------------------
# two dvc repro at once


SLOW = """\
stages:
  slow:
    cmd: python slow.py
    deps:
      - in.txt
      - slow.py
    outs:
      - out.txt
"""
# the stage holds its files until the test creates `release`
SLOW_PY = """\
import os, time
while not os.path.exists("release"):
    time.sleep(0.05)
open("ran.log", "a").write("x")
open("out.txt", "w").write(open("in.txt").read())
"""


def test_two_dvc_repro_at_once_in_one_workspace_corrupt_nothing(team_stack, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import pipeline.orchestration.flows as flows

    env = base_env()
    (tmp_path / "dvc.yaml").write_text(SLOW)
    (tmp_path / "slow.py").write_text(SLOW_PY)
    (tmp_path / "in.txt").write_text("first")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, env=env, check=True)
    release, rwlock = tmp_path / "release", tmp_path / ".dvc/tmp/rwlock"

    def start_repro() -> subprocess.Popen:
        cmd = [sys.executable, "-m", "dvc", "repro"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while not (rwlock.is_file() and "out.txt" in rwlock.read_text()):  # it runs the stage, holding its files
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.05)
        return proc

    def consistent(expected: str, runs: str) -> None:
        assert (tmp_path / "out.txt").read_text() == expected and (tmp_path / "ran.log").read_text() == runs
        status = subprocess.run(
            [sys.executable, "-m", "dvc", "status"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
        )
        assert "Data and pipelines are up to date" in status.stdout, status.stdout

    # a second plain `dvc repro` while the first runs the stage: it stops with DVC's lock message
    first = start_repro()
    second = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode != 0
    assert "is busy, it is being blocked by" in second.stderr or "Unable to acquire lock" in second.stderr
    release.touch()
    assert first.wait(timeout=120) == 0
    consistent("first", "x")

    # the flows' DVC tasks wait instead: a flow started meanwhile retries, then finds the work done
    release.unlink()
    (tmp_path / "in.txt").write_text("second")
    attempts: list[list[str]] = []
    real_stream = flows._stream_dvc

    def counted(args, repo, label):
        attempts.append(args)
        if len(attempts) == 2:  # the flow's first try was turned away: let the running stage finish
            release.touch()
        return real_stream(args, repo, label)

    monkeypatch.setattr(flows, "_stream_dvc", counted)
    monkeypatch.setattr(flows, "BUSY_POLL_SECONDS", 0.5)
    running = start_repro()
    with temporary_settings(updates={PREFECT_API_URL: team_stack.prefect_url}):
        outcomes = flows.pipeline_flow(repo=str(tmp_path), retries=0, push=False)
    assert running.wait(timeout=120) == 0
    assert outcomes == {"slow": "skipped"} and len(attempts) >= 2
    consistent("second", "xx")  # the stage ran once more, not twice


# ------------------------------------------------------------------------------------------------
# two registrations racing


def test_two_registrations_racing_on_one_model_leave_exactly_one_champion(team_stack, tmp_path, monkeypatch):
    """Both registrations create their versions at the same moment (a barrier), after both have
    started: they still decide one after the other, and the best version ends as the champion."""
    import mlflow

    from pipeline.stages.register import run as run_register

    uri, name = team_stack.mlflow_url, "gaugan-race"
    roots = {fid: tmp_path / f"fid-{fid:g}" for fid in (10.0, 8.0, 9.0)}
    fake_training(roots[10.0], uri, 1, 10.0)
    assert run_register(register_params(roots[10.0], model_name=name), roots[10.0])["promoted"]  # the champion
    for seed, fid in ((2, 8.0), (3, 9.0)):
        fake_training(roots[fid], uri, seed, fid)

    barrier = threading.Barrier(2)
    real_create = mlflow.MlflowClient.create_model_version

    def at_once(self, *args, **kwargs):
        barrier.wait(timeout=120)
        return real_create(self, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "create_model_version", at_once)
    results: dict[float, dict] = {}
    errors: list[BaseException] = []

    def register(fid: float) -> None:
        try:
            results[fid] = run_register(register_params(roots[fid], model_name=name), roots[fid])
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=register, args=(fid,)) for fid in (8.0, 9.0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    client = mlflow.MlflowClient(uri)
    assert client.get_model_version_by_alias(name, "champion").version == str(results[8.0]["version"])
    first, second = sorted(results.values(), key=lambda r: r["version"])
    # the later version decided after the earlier one, against the champion that one left
    assert second["champion_version_before"] == (first["version"] if first["promoted"] else 1)
    assert [r["value"] for r in (first, second) if r["promoted"]] in ([8.0], [9.0, 8.0])
    statuses = {v.version: v.tags["validation_status"] for v in client.search_model_versions(f"name='{name}'")}
    assert "pending" not in statuses.values() and len(statuses) == 3
