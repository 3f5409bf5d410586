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


def make_repo(root: Path, stages: str, commit: bool = False) -> Path:
    """A git + DVC project with ``data/raw`` as its source; with ``commit``, the source tracked with
    ``dvc add`` and everything committed (what the retraining flow starts from)."""
    root.mkdir(parents=True)
    (root / "data/raw").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "data/raw/a.txt").write_text("a")
    write_project_params(root, {"data": {"source": "data/raw"}})
    (root / "dvc.yaml").write_text(textwrap.dedent(stages))
    (root / "fail.py").write_text(FAIL)
    (root / ".gitignore").write_text("/.gaugan/\n")  # the flows' own records, as in the project's .gitignore
    _run(root, "git", "init", "-q")
    _run(root, sys.executable, "-m", "dvc", "init", "-q")
    _run(root, sys.executable, "-m", "dvc", "config", "core.autostage", "false")
    if commit:
        _run(root, sys.executable, "-m", "dvc", "add", "-q", "data/raw")
        _git_commit(root, "init")
    return root


def _git_commit(root: Path, message: str) -> None:
    _run(root, "git", "add", "-A")
    _run(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--allow-empty", "-qm", message)


def _git_out(root: Path, *args: str) -> str:
    return _run(root, "git", *args).strip()


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
    from pipeline.orchestration.flows import dvc_stages

    assert dvc_stages(toy_repo) == ["count", "report"]


def test_pipeline_flow_runs_the_stages_then_skips_them(prefect_server, toy_repo):
    from pipeline.orchestration.flows import pipeline_flow

    assert pipeline_flow(repo=str(toy_repo), retries=0) == {"count": "ran", "report": "ran"}
    assert (toy_repo / "out/files.txt").read_text() == "a.txt"
    assert (toy_repo / "report.txt").read_text() == "ok"
    assert pipeline_flow(repo=str(toy_repo), retries=0) == {"count": "skipped", "report": "skipped"}


def test_retrain_asks_dvc_for_new_data_and_commits_what_it_ran_with(prefect_server, tmp_path):
    from pipeline.orchestration.flows import retrain_flow

    repo = make_repo(tmp_path / "retrain", TOY, commit=True)
    start = _git_out(repo, "rev-parse", "HEAD")
    first = retrain_flow(repo=str(repo), retries=0)  # no stage has run on the source yet: DVC says changed
    assert first["ran"] and first["stages"] == {"count": "ran", "report": "ran"}
    assert set(first["seconds"]) == {"count", "report", "total"}
    assert _git_out(repo, "status", "--porcelain") == ""  # dvc.lock and DVC's .gitignore files committed
    assert _git_out(repo, "rev-parse", "HEAD~1") == start and first["ref"]["commit"] == _git_out(
        repo, "rev-parse", "HEAD"
    )
    assert "dvc.lock" in _git_out(repo, "show", "--name-only", "--format=", "HEAD").split()

    assert retrain_flow(repo=str(repo), retries=0) == {"ran": False, "changes": {}}

    (repo / "data/raw/b.txt").write_text("b")  # an upload: not even `dvc add`-ed; the flow versions it
    before = (repo / "data/raw.dvc").read_text()
    second = retrain_flow(repo=str(repo), retries=0)
    assert second["ran"] and second["changes"] == {"added": 1, "changed": 0, "removed": 0}
    assert second["stages"] == {"count": "ran", "report": "ran"}
    assert (repo / "out/files.txt").read_text().split() == ["a.txt", "b.txt"]
    assert (repo / "data/raw.dvc").read_text() != before  # the new version of the source...
    committed = _git_out(repo, "show", "--name-only", "--format=", "HEAD").split()
    assert {"data/raw.dvc", "dvc.lock"} <= set(committed)  # ...is in the retraining's commit
    assert _git_out(repo, "status", "--porcelain") == ""
    assert retrain_flow(repo=str(repo), retries=0)["ran"] is False

    forced = retrain_flow(repo=str(repo), force=True, retries=0)
    assert forced["ran"] and forced["stages"] == {"count": "skipped", "report": "skipped"}


def test_retrain_refuses_uncommitted_code_and_the_wrong_branch(prefect_server, tmp_path):
    from pipeline.orchestration.flows import retrain_flow
    from pipeline.versioning.gitstate import GitError

    repo = make_repo(tmp_path / "dirty", TOY, commit=True)
    head = _git_out(repo, "rev-parse", "HEAD")
    (repo / "fail.py").write_text("print('changed')\n")
    with pytest.raises(GitError, match=r"uncommitted changes .*fail\.py.*commit or stash"):
        retrain_flow(repo=str(repo), retries=0)
    _run(repo, "git", "checkout", "fail.py")
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("git_branch: null", "git_branch: retraining"))
    with pytest.raises(GitError, match=r"retrain.git_branch is 'retraining'.*git switch retraining"):
        retrain_flow(repo=str(repo), retries=0)
    assert _git_out(repo, "rev-parse", "HEAD") == head and not (repo / "out/files.txt").exists()


def test_retrain_pushes_the_commit_and_the_data_to_the_remotes(prefect_server, tmp_path):
    from pipeline.orchestration.flows import retrain_flow

    repo = make_repo(tmp_path / "pushed", TOY, commit=True)
    _run(tmp_path, "git", "init", "-q", "--bare", "origin.git")
    _run(repo, "git", "remote", "add", "origin", str(tmp_path / "origin.git"))
    _run(repo, sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(tmp_path / "store"))
    _git_commit(repo, "remotes")  # .dvc/config: part of the project, so committed
    result = retrain_flow(repo=str(repo), retries=0)
    assert result["ref"]["pushed"] == "origin"
    branch = _git_out(repo, "symbolic-ref", "--short", "HEAD")
    assert _git_out(tmp_path / "origin.git", "rev-parse", branch) == result["ref"]["commit"]
    assert any((tmp_path / "store").rglob("*")), "nothing reached the DVC remote"


def test_a_refused_push_keeps_the_commit_and_says_how_to_push_it(prefect_server, tmp_path):
    from pipeline.orchestration.flows import retrain_flow
    from pipeline.versioning.gitstate import GitError

    repo = make_repo(tmp_path / "refused", TOY, commit=True)
    _run(tmp_path, "git", "clone", "-q", str(repo), "clone")  # origin: a checkout whose branch is checked out
    clone = tmp_path / "clone"
    _run(clone, sys.executable, "-m", "dvc", "cache", "dir", "--local", str(repo / ".dvc/cache"))
    _run(clone, sys.executable, "-m", "dvc", "checkout", "-q", "data/raw.dvc")  # the source, from the original cache
    (clone / "out").mkdir()  # the toy's command writes into it
    head = _git_out(clone, "rev-parse", "HEAD")
    with pytest.raises(
        GitError, match=r"is made .* the git remote 'origin' did not take it.*push it yourself: git push"
    ):
        retrain_flow(repo=str(clone), retries=0)
    assert _git_out(clone, "rev-parse", "HEAD~1") == head  # the commit stays, to be pushed by hand
    assert _git_out(clone, "status", "--porcelain") == ""


@pytest.mark.parametrize("lost", ["git", "dvc"])
def test_a_lost_remote_stops_the_retraining_naming_it_with_nothing_committed(prefect_server, tmp_path, lost):
    from pipeline.errors import PipelineError
    from pipeline.orchestration.flows import retrain_flow

    repo = make_repo(tmp_path / f"lost-{lost}", TOY, commit=True)
    (tmp_path / "a-file").write_text("not a folder")
    if lost == "git":
        _run(repo, "git", "remote", "add", "origin", str(tmp_path / "gone.git"))
    else:
        _run(repo, sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(tmp_path / "a-file" / "store"))
    _git_commit(repo, "remotes")
    head = _git_out(repo, "rev-parse", "HEAD")
    (repo / "data/raw/b.txt").write_text("b")
    name = "'origin'" if lost == "git" else "'store'"
    with pytest.raises(PipelineError, match=f"(?i){lost} remote {name}"):
        retrain_flow(repo=str(repo), retries=0)
    assert _git_out(repo, "rev-parse", "HEAD") == head  # nothing committed
    assert not (repo / "report.txt").exists()  # nothing ran


def test_a_failing_stage_raises_with_its_name_and_output(prefect_server, tmp_path):
    from pipeline.errors import PipelineError, StageFailed
    from pipeline.orchestration.flows import pipeline_flow

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


def test_a_failed_retrain_commits_nothing_and_sees_the_data_as_new_again(prefect_server, tmp_path):
    from pipeline.errors import StageFailed
    from pipeline.orchestration.flows import detect_new_data, retrain_flow

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
        commit=True,
    )
    head = _git_out(repo, "rev-parse", "HEAD")
    with pytest.raises(StageFailed):
        retrain_flow(repo=str(repo), retries=0)
    assert _git_out(repo, "rev-parse", "HEAD") == head
    assert detect_new_data.fn(str(repo))["changed"] is True  # the next run tries again


def test_schedule_and_new_data_trigger_create_a_run(prefect_server, tmp_path):
    """The served deployment's cron schedule and event trigger, registered on a real server; the event
    from notify_new_data makes the server's trigger create a flow run with the deployment's parameters."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from pipeline.orchestration.flows import NEW_DATA_EVENT, build_deployment, dataset_resource_id, notify_new_data

    repo = tmp_path / "served"
    repo.mkdir()
    deployment = build_deployment(repo, cron="0 3 * * *", name="gaugan-retrain-test")
    assert deployment.entrypoint == "pipeline.orchestration.flows.retrain_flow"
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

    from pipeline.orchestration.flows import _api_healthy, build_deployment, local_prefect_server

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
