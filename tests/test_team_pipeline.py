"""The team path end to end, with the real servers (tests/team_stack.py) on loopback ports.

One workspace, set up as a teammate would (docs/team.md): a checkout of the project
(tiny settings) with a DVC local-folder remote as its default, its data source ``dvc add``-ed,
``prefect.yaml``'s deployments and the failure alert registered on the Prefect server (the compose
``deploy-flows`` command), and a ``process`` worker (the compose ``prefect-worker`` command) serving
it. The new-data event then makes the worker run the retraining deployment: every stage against
the MLflow server on PostgreSQL, then ``dvc push``. The tests check what that left behind.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import copy_project, write_project_params
from PIL import Image
from team_stack import TeamStack, base_env, compose_service, prefect_worker
from test_pipeline_e2e import PROJECT_FILES, TINY

pytestmark = pytest.mark.slow

MODEL = "gaugan-demo"


def run(cwd: Path, env: dict, *cmd: str, ok: bool = True, timeout: float = 600) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == ok, f"{cmd} exited {proc.returncode}:\n{out[-5000:]}"
    return out


def cli(cwd: Path, env: dict, *args: str, ok: bool = True) -> str:
    return run(cwd, env, sys.executable, "-m", "pipeline.cli", *args, ok=ok)


def dvc(cwd: Path, env: dict, *args: str, ok: bool = True) -> str:
    return run(cwd, env, sys.executable, "-m", "dvc", *args, ok=ok)


def git(cwd: Path, *args: str) -> str:
    return run(cwd, base_env(), "git", "-c", "user.name=t", "-c", "user.email=t@t", *args)


# ------------------------------------------------------------------------------------------------
# a loopback webhook receiver (the team's chat or incident hook)


class Hook:
    def __init__(self):
        self.received: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/gaugan-alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.5)
        return list(self.received)


@pytest.fixture(scope="module")
def hook():
    receiver = Hook()
    yield receiver
    receiver.server.shutdown()


# ------------------------------------------------------------------------------------------------
# the workspace and the worker's run


@dataclass
class Workspace:
    root: Path
    env: dict
    remote: Path
    stack: TeamStack
    flow_run: object  # the retraining deployment's flow run that the event started


def prefect_call(stack: TeamStack, coroutine_fn):
    """Run ``coroutine_fn(client)`` with a Prefect client of the team's server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def call():
        async with get_client() as client:
            return await coroutine_fn(client)

    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_url}):
        return asyncio.run(call())


def deployment_runs(stack: TeamStack, deployment: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    async def runs(client):
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
        )

    return prefect_call(stack, runs)


def make_workspace(root: Path, remote: Path, env: dict, webhook: str) -> None:
    """A teammate's checkout: the project, a DVC remote as default, the source `dvc add`-ed, committed."""
    copy_project(root, [*PROJECT_FILES, "prefect.yaml"])
    write_project_params(root, {**TINY, "prefect": {"failure_webhook": webhook}})
    git(root, "init", "-q")
    dvc(root, env, "remote", "add", "-d", "team", str(remote))
    cli(root, env, "demo-data", "--out", "data/raw/demo")
    dvc(root, env, "add", "data/raw/demo")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "workspace")


@pytest.fixture(scope="module")
def workspace(team_stack: TeamStack, hook: Hook, tmp_path_factory) -> Workspace:
    folder = tmp_path_factory.mktemp("team-workspace")
    root, remote = folder / "gaugan", folder / "dvc-remote"
    root.mkdir()
    env = base_env(
        MLFLOW_TRACKING_URI=team_stack.mlflow_url,
        PREFECT_API_URL=team_stack.prefect_url,
        PREFECT_HOME=str(folder / "prefect-home"),
    )
    make_workspace(root, remote, env, hook.url)
    # compose's deploy-flows: prefect.yaml's deployments and the failure alert, on the team's server
    deploy = compose_service("deploy-flows")["command"]
    run(root, env, *deploy)
    worker = prefect_worker(team_stack.prefect_url, team_stack.mlflow_url, root, folder).start().wait_healthy()
    try:
        started = time.monotonic()
        cli(root, env, "notify-new-data", "--repo", str(root))
        flow_run = None
        while time.monotonic() - started < 900:
            runs = deployment_runs(team_stack, "gaugan-retrain")
            done = [r for r in runs if r.state is not None and r.state.is_final()]
            if done:
                flow_run = done[0]
                break
            time.sleep(2)
        assert flow_run is not None, f"no retraining run finished; the worker's log:\n{worker.log.read_text()[-5000:]}"
        print(f"event -> finished retraining run on the worker: {time.monotonic() - started:.0f} s")
        yield Workspace(root, env, remote, team_stack, flow_run)
    finally:
        worker.stop()


# ------------------------------------------------------------------------------------------------
# the tests


def test_the_new_data_event_runs_the_pipeline_on_the_worker_and_pushes_to_the_remote(workspace):
    run_ = workspace.flow_run
    log = (workspace.root.parent / "prefect-worker.log").read_text()
    assert run_.state.is_completed(), f"{run_.state}\n{log[-5000:]}"
    assert run_.parameters == {"repo": ".", "force": False}  # prefect.yaml's trigger parameters
    for stage in ("ingest", "train", "train-segmenter", "evaluate", "register"):
        assert f"{stage} ran (" in log  # the flow's "stages:" lines (train and train-segmenter side by side)
    assert "pushed to the DVC remote 'team'" in log
    # everything dvc.lock names is in the remote: a teammate can pull it
    status = dvc(workspace.root, workspace.env, "status", "--cloud")
    assert "Cache and remote 'team' are in sync" in status
    registration = json.loads((workspace.root / "outputs/register/registration.json").read_text())
    assert registration["name"] == MODEL and registration["promoted"] is True
    assert registration["tracking_uri"] == workspace.stack.mlflow_url


def test_runs_models_and_lineage_live_in_the_mlflow_server_on_postgresql(workspace):
    import mlflow
    import psycopg2

    stack = workspace.stack
    client = mlflow.MlflowClient(stack.mlflow_url)
    ref = json.loads((workspace.root / "outputs/train/run.json").read_text())
    assert ref["tracking_uri"] == stack.mlflow_url
    experiment = client.get_experiment_by_name(ref["experiment"])
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")  # artifacts go through the server
    run_ = client.get_run(ref["run_id"])
    assert run_.info.status == "FINISHED" and "fid" in run_.data.metrics and "G_GAN" in run_.data.metrics
    # lineage: the training data is the run's dataset input, with DVC's md5 and its place in the remote
    lock = yaml.safe_load((workspace.root / "dvc.lock").read_text())
    md5 = next(o["md5"] for o in lock["stages"]["ingest"]["outs"] if o["path"] == "data/prepared")
    (dataset_input,) = run_.inputs.dataset_inputs
    assert dataset_input.dataset.digest == md5.removesuffix(".dir")
    tags = {t.key: t.value for t in dataset_input.tags}
    assert tags["mlflow.data.context"] == "training" and tags["dvc_md5"] == md5 and tags["dvc_remote"] == "team"
    location = json.loads(dataset_input.dataset.source)["uri"]
    assert location == tags["dvc_remote_location"] and location.endswith(f"/files/md5/{md5[:2]}/{md5[2:]}")
    assert Path(location.removeprefix("file://")).is_file()  # the pushed .dir listing of that version
    # the registry: the version, its alias, and the files on the server's side
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == ref["run_id"]
    assert list(stack.artifacts.rglob("generator.pt")), "no artifact reached the server's artifact store"
    # ... all held by PostgreSQL
    with psycopg2.connect(stack.postgres.url("mlflow")) as db, db.cursor() as cursor:
        cursor.execute("SELECT name FROM registered_models")
        assert (MODEL,) in cursor.fetchall()
        cursor.execute("SELECT status FROM runs WHERE run_uuid = %s", (ref["run_id"],))
        assert cursor.fetchone() == ("FINISHED",)


def _label_png(root: Path, out: Path) -> Path:
    label = sorted((root / "data/raw/demo/labels/val").glob("*.png"))[0]
    shutil.copy2(label, out)
    return out


def _synthesized(generator: Path, label: Path, out: Path) -> np.ndarray:
    from pipeline.serving.synthesize import synthesize

    return np.asarray(Image.open(synthesize(str(generator), label, out)))


def test_the_registered_model_loads_in_an_empty_working_copy(workspace, tmp_path, monkeypatch):
    from pipeline.serving.synthesize import synthesize

    label = _label_png(workspace.root, tmp_path / "label.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)  # no project, no generator file: everything comes through the server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", workspace.stack.mlflow_url)
    synthesize(f"models:/{MODEL}@champion", label, Path("x.png"))
    assert sorted(p.name for p in empty.iterdir()) == ["x.png"]  # nothing else needed or written here
    local = _synthesized(workspace.root / "models/generator.pt", label, tmp_path / "local.png")
    np.testing.assert_array_equal(np.asarray(Image.open(empty / "x.png")), local)


def test_a_fresh_clone_pulls_and_reproduces_nothing(workspace, tmp_path):
    root, env = workspace.root, workspace.env
    # the retraining committed what made its model (retrain.commit): nothing is left to commit
    assert git(root, "status", "--porcelain").strip() == ""
    assert git(root, "log", "-1", "--format=%s").startswith(f"retrain: {MODEL} version")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(root), str(clone))
    assert not (clone / "models/generator.pt").exists() and not (clone / "data/raw/demo").exists()
    dvc(clone, env, "pull")
    again = dvc(clone, env, "repro")
    ran = {line.split("'")[1] for line in again.splitlines() if line.startswith("Running stage '")}
    assert ran == {"resolve-parent"} and "Stage 'train' didn't change, skipping" in again  # always_changed: it looks
    label = _label_png(clone, tmp_path / "label.png")
    pulled = _synthesized(clone / "models/generator.pt", label, tmp_path / "pulled.png")
    np.testing.assert_array_equal(pulled, _synthesized(root / "models/generator.pt", label, tmp_path / "original.png"))


def test_a_failing_stage_on_the_worker_posts_to_the_failure_webhook(workspace, hook, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dvc.yaml").write_text(
        "stages:\n  prepare:\n    cmd: python -c \"import sys; print('disk quota exceeded'); sys.exit(3)\"\n"
        "    outs:\n      - never.txt\n"
    )
    git(broken, "init", "-q")
    dvc(broken, workspace.env, "init", "-q")
    before = len(hook.received)
    with temporary_settings(updates={PREFECT_API_URL: workspace.stack.prefect_url}):
        flow_run = run_deployment(
            "gaugan-pipeline/gaugan-pipeline", parameters={"repo": str(broken), "retries": 0}, timeout=300
        )
    assert flow_run.state.is_failed()
    received = hook.wait(before + 1, timeout=120)
    assert len(received) == before + 1, "the failure automation did not call the webhook"
    alert = received[-1]
    assert alert["flow"] == "gaugan-pipeline" and alert["flow_run_id"] == str(flow_run.id)
    assert alert["state"] == "Failed" and alert["deployment"] == "gaugan-pipeline"
    assert "stage 'prepare' failed" in alert["message"] and "disk quota exceeded" in alert["message"]


def test_the_mlflow_server_answers_the_compose_host_names_only(team_stack):
    """compose's MLFLOW_SERVER_ALLOWED_HOSTS (DNS-rebinding protection): the service name that the other
    containers use is served; a host name not listed is refused."""
    from team_stack import answers

    port = team_stack.mlflow_url.rsplit(":", 1)[1]
    api = f"{team_stack.mlflow_url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    assert answers(api, host=f"mlflow:{port}") and answers(api, host=f"127.0.0.1:{port}")
    assert not answers(api, host=f"attacker.example:{port}")
