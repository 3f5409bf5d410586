"""Prefect flows against real tools: a real (test-harness) Prefect server, real DVC in a tiny git+dvc repo.

The toy dvc.yaml has two stages: ``count`` lists the files of the source folder (its DVC dep) and
``report`` reads that list. The event-trigger test applies the real deployment to the server and
checks that emitting the new-data event makes the server create a run of it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from conftest import write_project_params

if "PREFECT_HOME" not in os.environ:  # before prefect is first imported: keep ~/.prefect out of the tests
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], True)

COUNT = "import os, sys; files = sorted(os.listdir('data/raw')); open('out/files.txt', 'w').write(chr(10).join(files))"
REPORT = "print('report:', len(open('out/files.txt').read().split()), 'files'); open('report.txt', 'w').write('ok')"
FAIL = "import sys\nprint('preparing the failure')\nprint('boom: the stage broke', file=sys.stderr)\nsys.exit(3)\n"


def _run(cwd: Path, *cmd: str) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def make_repo(root: Path, stages: str) -> Path:
    root.mkdir(parents=True)
    (root / "data/raw").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "data/raw/a.txt").write_text("a")
    write_project_params(root, {"data": {"source": "data/raw"}})
    (root / "dvc.yaml").write_text(textwrap.dedent(stages))
    (root / "fail.py").write_text(FAIL)
    _run(root, "git", "init", "-q")
    _run(root, sys.executable, "-m", "dvc", "init", "-q")
    _run(root, sys.executable, "-m", "dvc", "config", "core.autostage", "false")
    return root


TOY = f"""\
    stages:
      report:
        cmd: python -c "{REPORT}"
        deps:
          - out/files.txt
        outs:
          - report.txt
      count:
        cmd: python -c "{COUNT}"
        deps:
          - data/raw
        outs:
          - out/files.txt
    """


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("flows") / "repo", TOY)


def test_stage_order_follows_the_dvc_graph_not_the_file_order(toy_repo):
    from pipeline.flows import dvc_stages

    assert dvc_stages(toy_repo) == ["count", "report"]


def test_pipeline_flow_runs_the_stages_then_skips_them(prefect_server, toy_repo):
    from pipeline.flows import pipeline_flow

    assert pipeline_flow(repo=str(toy_repo), retries=0) == {"count": "ran", "report": "ran"}
    assert (toy_repo / "out/files.txt").read_text() == "a.txt"
    assert (toy_repo / "report.txt").read_text() == "ok"
    assert pipeline_flow(repo=str(toy_repo), retries=0) == {"count": "skipped", "report": "skipped"}


def test_retrain_runs_on_new_files_only(prefect_server, toy_repo):
    from pipeline.flows import SNAPSHOT, retrain_flow

    first = retrain_flow(repo=str(toy_repo), retries=0)  # no snapshot yet: the source is new
    assert first["ran"] and first["changes"]["added"] == 1
    assert (toy_repo / SNAPSHOT).is_file()

    assert retrain_flow(repo=str(toy_repo), retries=0) == {
        "ran": False,
        "changes": {"added": 0, "changed": 0, "removed": 0},
    }

    (toy_repo / "data/raw/b.txt").write_text("b")
    second = retrain_flow(repo=str(toy_repo), retries=0)
    assert second["ran"] and second["changes"] == {"added": 1, "changed": 0, "removed": 0}
    assert second["stages"] == {"count": "ran", "report": "ran"}
    assert (toy_repo / "out/files.txt").read_text().split() == ["a.txt", "b.txt"]
    assert retrain_flow(repo=str(toy_repo), retries=0)["ran"] is False

    forced = retrain_flow(repo=str(toy_repo), force=True, retries=0)
    assert forced["ran"] and forced["stages"] == {"count": "skipped", "report": "skipped"}


def test_a_failing_stage_raises_with_its_name_and_output(prefect_server, tmp_path):
    from pipeline.errors import PipelineError, StageFailed
    from pipeline.flows import pipeline_flow

    repo = make_repo(
        tmp_path / "failing",
        """\
        stages:
          prepare:
            cmd: python fail.py
            outs:
              - out/never.txt
        """,
    )
    with pytest.raises(StageFailed) as err:
        pipeline_flow(repo=str(repo), retries=0)
    message = str(err.value)
    assert "'prepare'" in message and "exit code" in message and "boom: the stage broke" in message
    with pytest.raises(PipelineError, match="unknown stages"):
        pipeline_flow(repo=str(repo), stages=["nope"])


def test_failed_retrain_keeps_the_old_snapshot(prefect_server, tmp_path):
    from pipeline.errors import StageFailed
    from pipeline.flows import SNAPSHOT, retrain_flow

    repo = make_repo(
        tmp_path / "failing",
        """\
        stages:
          prepare:
            cmd: python fail.py
            deps:
              - data/raw
            outs:
              - out/never.txt
        """,
    )
    with pytest.raises(StageFailed):
        retrain_flow(repo=str(repo), retries=0)
    assert not (repo / SNAPSHOT).exists()  # the next run sees the same files as new again


def test_snapshot_scan_detects_added_changed_removed(tmp_path):
    from pipeline.flows import scan_source

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/x.png").write_bytes(b"x")
    (tmp_path / "y.png").write_bytes(b"y")
    snap, changes = scan_source(tmp_path, {})
    assert changes == {"added": ["sub/x.png", "y.png"], "changed": [], "removed": []}
    assert snap["sub/x.png"]["sha256"] is None  # new files are not read

    (tmp_path / "y.png").write_bytes(b"yy")
    (tmp_path / "sub/x.png").unlink()
    snap2, changes = scan_source(tmp_path, snap)
    assert changes == {"added": [], "changed": ["y.png"], "removed": ["sub/x.png"]}
    assert len(snap2["y.png"]["sha256"]) == 64

    # touched, same content: hashed again, found equal, not new data (the new mtime is remembered)
    later = snap2["y.png"]["mtime_ns"] + 10**9
    os.utime(tmp_path / "y.png", ns=(later, later))
    snap3, changes = scan_source(tmp_path, snap2)
    assert changes == {"added": [], "changed": [], "removed": []}
    assert snap3["y.png"]["mtime_ns"] == later
    assert scan_source(tmp_path, snap3)[1] == changes


def test_schedule_and_new_data_trigger_create_a_run(prefect_server, tmp_path):
    """The served deployment's cron schedule and event trigger, registered on a real server; the event
    from notify_new_data makes the server's trigger create a flow run with the deployment's parameters."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from pipeline.flows import NEW_DATA_EVENT, build_deployment, dataset_resource_id, notify_new_data

    repo = tmp_path / "served"
    repo.mkdir()
    deployment = build_deployment(repo, cron="0 3 * * *", name="gaugan-retrain-test")
    assert deployment.entrypoint == "pipeline.flows.retrain_flow"
    deployment_id = deployment.apply()

    async def state():
        async with get_client() as client:
            dep = await client.read_deployment(deployment_id)
            automations = await client.read_automations_by_name("gaugan-retrain-test-on-new-data")
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            return dep, automations, runs

    dep, automations, runs = asyncio.run(state())
    assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * *"]
    assert dep.parameters["repo"] == str(repo.resolve())
    assert len(automations) == 1 and NEW_DATA_EVENT in automations[0].trigger.expect
    assert automations[0].trigger.match.get("prefect.resource.id") in (
        dataset_resource_id(repo),
        [dataset_resource_id(repo)],
    )

    notify_new_data(tmp_path / "another-repo")  # another checkout's event: no run of this deployment
    notify_new_data(repo)
    deadline = time.monotonic() + 60
    triggered = []
    while time.monotonic() < deadline:
        triggered = [r for r in asyncio.run(state())[2] if r.auto_scheduled is not True]
        if triggered:
            break
        time.sleep(1)
    assert len(triggered) == 1, "the new-data event did not start a run of the deployment"
    assert triggered[0].parameters["repo"] == str(repo.resolve())
    assert triggered[0].parameters["force"] is False


def test_schedule_without_a_server_starts_a_local_one_whose_scheduler_creates_runs(tmp_path, monkeypatch):
    """`gaugan-pipeline schedule` with no PREFECT_API_URL: a real `prefect server start` (its own
    SQLite under PREFECT_HOME) that runs the scheduler, so the cron schedule produces runs; the server
    is stopped on exit."""
    import asyncio
    import socket

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from pipeline.flows import _api_healthy, build_deployment, local_prefect_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))  # the server's database
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "2")
    repo = tmp_path / "scheduled"
    repo.mkdir()
    with local_prefect_server(port) as url:
        assert url == f"http://127.0.0.1:{port}/api" and os.environ["PREFECT_API_URL"] == url
        deployment_id = build_deployment(repo, cron="*/5 * * * *", name="gaugan-retrain-local").apply()

        async def scheduled():
            async with get_client() as client:
                assert str(client.api_url).rstrip("/") == url
                return await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
                )

        deadline = time.monotonic() + 90
        runs = []
        while time.monotonic() < deadline and not runs:
            runs = [r for r in asyncio.run(scheduled()) if r.auto_scheduled]
            time.sleep(1)
        assert runs, "the local server's scheduler created no run of the cron deployment"
        assert runs[0].parameters["repo"] == str(repo.resolve())
    assert not _api_healthy(url)
    assert (tmp_path / "prefect-home" / f"server-{port}.log").is_file()
