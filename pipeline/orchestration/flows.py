"""Prefect flows over the DVC pipeline: retries, logs, run history, a schedule and a trigger on new data.

DVC stays in charge of the DAG, of what is stale and of caching. Each Prefect task runs one stage
with ``dvc repro --single-item <stage>`` (so a stage that is up to date is skipped by DVC, and its
upstream stages are never run behind the flow's back), in the order of ``dvc.yaml``'s graph.
Prefect's own result cache is off for these tasks (``NO_CACHE``): a Prefect cache hit would skip
DVC's check. The child's output goes line by line into the Prefect run log.

- :func:`pipeline_flow` (``gaugan-pipeline flow run``): every stage, in DVC's order.
- :func:`retrain_flow` (``gaugan-pipeline flow retrain``): asks DVC whether ``data.source`` changed
  since the stages last ran on it (a source tracked with ``dvc add`` is first versioned again), and
  if so (or with ``force``) retrains (``retrain`` in params.yaml: the champion's version pinned as
  the parent), registers, and commits what made the model as one git commit tagged
  ``model/<name>/<version>``, pushed with the data when remotes are set. The ingest stage is
  incremental, so only new samples are prepared.
- :func:`serve_schedule` (``gaugan-pipeline schedule --cron "0 3 * * *"``): serves
  :func:`retrain_flow` as a deployment with the cron schedule and an event trigger on
  ``gaugan.dataset.updated`` for this repository's resource id (:func:`dataset_resource_id`).
  Blocks until interrupted.
- :func:`notify_new_data` (``gaugan-pipeline notify-new-data``): emits that event, e.g. from the
  job that uploads new images; from any other process, ``prefect event emit gaugan.dataset.updated
  --resource-id <id>`` or ``prefect.events.emit_event(...)`` with the same event and resource id.

Where Prefect runs: with no ``PREFECT_API_URL``, ``flow run`` and ``flow retrain`` start
Prefect's temporary local server (about 15 s) that lives as long as the command. Schedules and
triggers need a server that stays up and runs the scheduler: with no ``PREFECT_API_URL``,
``schedule`` starts ``prefect server start`` on port 4200 itself (SQLite under ``PREFECT_HOME``,
so deployments and run history persist) and stops it on exit; or run one yourself::

    prefect server start                          # terminal 1 (UI at http://127.0.0.1:4200)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    gaugan-pipeline schedule --cron "0 3 * * *"   # terminal 2: serves until Ctrl-C
    gaugan-pipeline notify-new-data               # anywhere with the same PREFECT_API_URL

Any other Prefect server (or Prefect Cloud) works the same way through ``PREFECT_API_URL``. DVC
must not run twice at once in one workspace: each DVC command of a flow waits while another one
(a teammate's ``dvc repro``, another flow run) uses the workspace, and every DVC task carries the
tag ``dvc-workspace``, so ``prefect concurrency-limit create dvc-workspace 1`` also serializes them
across flow runs.

For a team (docs/team.md): ``prefect.yaml`` deploys :func:`pipeline_flow` and
:func:`retrain_flow` on the work pool ``gaugan`` (schedule and new-data trigger included), workers
on GPU machines run them, :func:`pipeline_flow` ends with ``dvc push`` when a default DVC remote is
set, and :func:`set_failure_alert` (``gaugan-pipeline flow alerts``) has the Prefect server POST to
a webhook when a deployment run fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The temporary local server needs longer than Prefect's 20 s default to start on a busy machine;
# must be set before prefect is imported.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from pipeline.errors import MissingInputError, PipelineError, StageFailed  # noqa: E402
from pipeline.io import atomic_write_json, digest  # noqa: E402
from pipeline.orchestration.retraining import RetrainPlan  # noqa: E402
from pipeline.versioning.tools import tool_env  # noqa: E402

NEW_DATA_EVENT = "gaugan.dataset.updated"
RETRAIN_SUMMARY = Path(".gaugan") / "retrain_summary.json"
DEPLOYMENT = "gaugan-retrain"
REGISTER_STAGE = "register"  # the stage that touches the registry: the retraining runs it last
TAIL_LINES = 40
# DVC's messages when another DVC command holds the workspace (its repository lock; a stage's files)
DVC_BUSY = ("Unable to acquire lock", "is busy, it is being blocked by")
BUSY_POLL_SECONDS = 5


# The temporary server of `flow run` / `flow retrain` writes to one SQLite file from several services
# at once; a run of the retraining stalled 60 s (SQLite's busy timeout in Prefect) and logged "database
# is locked". These services serve schedules, automations and the event feed, which a temporary
# server that lives as long as one command never uses; the run's flow and task states do not need them.
EPHEMERAL_SERVICES_OFF = {
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",  # and with it the events' vacuum
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
}


def lean_temporary_server() -> None:
    """With no ``PREFECT_API_URL`` (the command starts Prefect's temporary server), turn off the
    server services it never uses (:data:`EPHEMERAL_SERVICES_OFF`); call before the first flow runs."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        for key, value in EPHEMERAL_SERVICES_OFF.items():
            os.environ.setdefault(key, value)


# ------------------------------------------------------------------------------------------------
# DVC


def dvc_stages(repo: Path | str) -> list[str]:
    """The pipeline's stages (those with a command) in dependency order, ties in dvc.yaml order."""
    import networkx as nx
    from dvc.repo import Repo

    root = Path(repo).resolve()
    with Repo(str(root)) as dvc_repo:
        index = dvc_repo.index
        stages = [s for s in index.stages if getattr(s, "cmd", None)]
        position = {s: i for i, s in enumerate(index.stages)}
        graph = index.graph.reverse().subgraph(stages)  # edges upstream -> downstream
        ordered = nx.lexicographical_topological_sort(graph, key=lambda s: position[s])
        return [_address(s, root) for s in ordered]


def _address(stage, root: Path) -> str:
    """The stage's name as ``dvc repro`` takes it from the repository root (``sub/dvc.yaml:name`` in a subfolder)."""
    dvcfile = Path(stage.path).resolve()
    return stage.name if dvcfile == root / "dvc.yaml" else f"{dvcfile.relative_to(root).as_posix()}:{stage.name}"


def _outcome(stage: str, lines: list[str]) -> str:
    text = "\n".join(lines)
    if f"Running stage '{stage}'" in text:
        return "ran"
    if "is cached - skipping run" in text:
        return "restored"
    return "skipped"


def _run_dvc(args: list[str], repo: str, label: str, wait_seconds: float) -> tuple[int, list[str], list[str]]:
    """``dvc <args>`` in ``repo``; -> (exit code, the first lines, the last lines of its output).

    While another DVC command uses the workspace (a teammate's ``dvc repro``, another flow run),
    wait for it, up to ``wait_seconds``, rather than fail: ``--wait-for-lock`` waits for DVC's
    repository lock, and a command stopped by DVC's lock on a stage's files ("is busy") is run again
    every few seconds. Two DVC commands thus never work on one workspace at once.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        code, lines, tail = _stream_dvc(args, repo, label)
        busy = code != 0 and any(message in line for line in tail for message in DVC_BUSY)
        if not busy or time.monotonic() > deadline:
            return code, lines, tail
        get_run_logger().warning("another DVC command is using %s; trying again in %g s", repo, BUSY_POLL_SECONDS)
        time.sleep(BUSY_POLL_SECONDS)


def _stream_dvc(args: list[str], repo: str, label: str) -> tuple[int, list[str], list[str]]:
    """``dvc --wait-for-lock <args>`` once, each output line into the Prefect run log."""
    logger = get_run_logger()
    cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", *args]
    logger.info("%s$ dvc %s", repo, " ".join(args))
    lines: list[str] = []
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(
        cmd,
        cwd=repo,
        env=tool_env(Path(repo)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\r\n")
            if len(lines) < 10_000:
                lines.append(line)
            tail.append(line)
            logger.info("[%s] %s", label, line)
        code = proc.wait()
    except BaseException:  # cancelled or interrupted: do not leave DVC running
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    return code, lines, list(tail)


@task(
    name="dvc-stage",
    task_run_name="dvc repro {stage}",
    retries=1,
    retry_delay_seconds=10,
    cache_policy=NO_CACHE,
    tags=["dvc-workspace"],
)
def dvc_stage(stage: str, repo: str, wait_seconds: float = 3600) -> str:
    """``dvc repro --single-item <stage>``; returns 'ran', 'skipped' (up to date) or 'restored' (run-cache)."""
    code, lines, tail = _run_dvc(["repro", "--single-item", stage], repo, stage, wait_seconds)
    if code != 0:
        raise StageFailed(f"stage {stage!r} failed (dvc exit code {code}); last lines:\n" + "\n".join(tail))
    return _outcome(stage, lines)


def default_remote(repo: Path | str) -> str | None:
    """The name of the project's default DVC remote (``dvc remote add -d``), or None."""
    from dvc.repo import Repo

    with Repo(str(Path(repo).resolve())) as dvc_repo:
        return dvc_repo.config["core"].get("remote") or None


@task(name="dvc-push", retries=2, retry_delay_seconds=30, cache_policy=NO_CACHE, tags=["dvc-workspace"])
def dvc_push(repo: str, wait_seconds: float = 3600) -> str | None:
    """``dvc push`` to the default remote; returns its name, or None (and pushes nothing) when none is set."""
    remote = default_remote(repo)
    if remote is None:
        get_run_logger().info("no default DVC remote (dvc remote add -d NAME URL): nothing pushed")
        return None
    code, _, tail = _run_dvc(["push"], repo, "push", wait_seconds)
    if code != 0:
        raise StageFailed(f"dvc push to remote {remote!r} failed (exit code {code}); last lines:\n" + "\n".join(tail))
    return remote


@flow(name="gaugan-pipeline", log_prints=True)
def pipeline_flow(
    repo: str = ".",
    stages: list[str] | None = None,
    retries: int = 1,
    retry_delay_seconds: float = 10,
    push: bool = True,
    wait_seconds: float = 3600,
) -> dict[str, str]:
    """Run the DVC stages (all by default, else the named ones) in DVC's order; returns stage -> outcome.

    Each stage runs alone (``--single-item``): naming a subset does not run the stages before it.
    A failing stage is retried ``retries`` times, then the flow fails with its output's tail. With
    ``push`` and a default DVC remote, the outputs are then pushed (``dvc push``), so that a
    teammate's ``dvc pull`` gets them. Another DVC command using the workspace is waited for, up to
    ``wait_seconds``.
    """
    root = Path(repo).resolve()
    order = _select(dvc_stages(root), stages, root)
    outcomes, _ = run_stages(root, order, retries, retry_delay_seconds, wait_seconds)
    if push:
        remote = dvc_push(str(root), wait_seconds)
        if remote is not None:
            print(f"pushed to the DVC remote {remote!r}")
    return outcomes


def _select(order: list[str], stages: list[str] | None, root: Path) -> list[str]:
    if not stages:
        return order
    unknown = [s for s in stages if s not in order]
    if unknown:
        raise PipelineError(f"unknown stages {unknown}; {root / 'dvc.yaml'} has {order}")
    return [s for s in order if s in stages]


def run_stages(
    root: Path, order: list[str], retries: int, retry_delay_seconds: float, wait_seconds: float
) -> tuple[dict[str, str], dict[str, float]]:
    """Each stage as a :func:`dvc_stage` task, in order; -> (stage -> outcome, stage -> seconds).

    The two training stages, when both would run and the machine has several cores, run side by
    side instead (:func:`side_by_side_stages`; each gets the pair's seconds)."""
    from pipeline.orchestration.side_by_side import SIDE_BY_SIDE

    run_stage = dvc_stage.with_options(retries=retries, retry_delay_seconds=retry_delay_seconds)
    outcomes: dict[str, str] = {}
    seconds: dict[str, float] = {}
    pair = [s for s in order if s in SIDE_BY_SIDE] if (os.cpu_count() or 1) > 1 else []
    for stage in order:
        if stage in outcomes:
            continue
        started = time.perf_counter()
        if stage in pair and len(pair) > 1:
            for done in side_by_side_stages(pair, str(root)):
                outcomes[done], seconds[done] = "ran", round(time.perf_counter() - started, 1)
            pair = []  # tried once: what is left runs alone
        if stage not in outcomes:
            outcomes[stage] = run_stage(stage, str(root), wait_seconds)
            seconds[stage] = round(time.perf_counter() - started, 1)
    print("stages: " + ", ".join(f"{s} {o} ({seconds[s]:.1f} s)" for s, o in outcomes.items()))
    return outcomes, seconds


@task(name="dvc-stages-side-by-side", cache_policy=NO_CACHE, tags=["dvc-workspace"])
def side_by_side_stages(stages: list[str], repo: str) -> list[str]:
    """Of ``stages``, those that would run, when more than one: run at once (the cores shared out) and
    recorded with ``dvc commit`` (:mod:`pipeline.orchestration.side_by_side`); -> the stages run (none: left to DVC)."""
    from pipeline.orchestration.side_by_side import changed_stages, run_side_by_side

    root = Path(repo)
    env = tool_env(root)
    pending = [s for s in stages if s in changed_stages(root, env, stages)]
    if len(pending) < 2:
        return []
    run_side_by_side(root, env, pending)
    code, _, tail = _run_dvc(["commit", "--force", *pending], repo, "commit", 3600)
    if code != 0:
        raise StageFailed(f"dvc commit of {', '.join(pending)} failed (exit code {code}):\n" + "\n".join(tail))
    return pending


# ------------------------------------------------------------------------------------------------
# new data and the retraining


@task(name="detect-new-data", cache_policy=NO_CACHE, tags=["dvc-workspace"])
def detect_new_data(repo: str) -> dict:
    """Ask DVC whether ``data.source`` changed since the stages last ran on it.

    A source tracked with ``dvc add`` whose files moved is first recorded as a new version (``dvc
    add``: its ``.dvc`` file changes, the files go to DVC's cache). Then ``dvc status``: the source's
    hash against the one ``dvc.lock`` holds; ``dvc diff``: how many files moved since the last commit.
    """
    from pipeline.params import load_params
    from pipeline.versioning.data_versions import is_tracked, source_changed, source_diff, track

    root = Path(repo)
    configured = load_params(root / "params.yaml").data.source
    source = root / configured
    if not source.exists():
        raise MissingInputError(f"data.source {source} does not exist (params.yaml); nothing to watch")
    tracked = is_tracked(source)
    if not tracked:
        get_run_logger().warning(
            "data.source %s is not versioned by DVC: `dvc add %s` and commit %s.dvc, so that a registered "
            "model names the data it was trained on",
            configured,
            configured,
            configured,
        )
    if tracked:
        track(source)  # an upload not yet `dvc add`-ed becomes a version of its own
    changed = source_changed(root, configured)
    return {
        "source": configured,
        "tracked": tracked,
        "changed": changed,
        "changes": source_diff(root, configured) if changed and tracked else {},
    }


@task(name="plan-retraining", cache_policy=NO_CACHE)
def plan_retraining_task(repo: str) -> RetrainPlan:
    """Decide finetune or scratch (``retrain`` in params.yaml) and write the training settings it needs."""
    from pipeline.orchestration.retraining import apply_plan, plan_retraining
    from pipeline.params import load_params

    root = Path(repo)
    plan = plan_retraining(load_params(root / "params.yaml"), root)
    return apply_plan(root / "params.yaml", plan)


@task(name="check-remotes", cache_policy=NO_CACHE, tags=["dvc-workspace"])
def check_remotes(repo: str, dvc_remote: bool, git_remote: str | None, source: str | None) -> None:
    """Before anything is trained or registered: the git remote answers (``git ls-remote``) and the
    DVC remote takes the raw data (``dvc push`` of the source's ``.dvc``); else a clear error."""
    from pipeline.versioning.gitstate import check_remote

    root = Path(repo)
    if git_remote is not None:
        check_remote(root, git_remote)
    if dvc_remote and source is not None:
        _push_to_dvc_remote(root, [f"{source}.dvc"])


def _push_to_dvc_remote(root: Path, targets: list[str]) -> None:
    from pipeline.versioning.data_versions import DVCError, dvc

    remote = default_remote(root)
    try:
        dvc(root, "push", "-q", *targets)
    except DVCError as err:
        url = dvc(root, "remote", "list", check=False).stdout.strip()
        raise DVCError(
            f"the DVC remote {remote!r} did not take the data ({err}); remotes: {url or 'none'}; fix it "
            "(dvc remote modify) and run the retraining again: nothing was committed or registered"
        ) from err


@task(name="commit-result", cache_policy=NO_CACHE)
def commit_result(repo: str, result: dict, plan: RetrainPlan, registered: bool, git_remote: str | None) -> dict:
    """One commit of what made the model, tagged with its version; the version and its run get the
    ref (``git_ref``, ``git_tag``); then the push to the git remote, if any. -> the ref."""
    from pipeline.orchestration.retraining import commit_retraining, push_ref, record_ref

    root = Path(repo)
    ref = commit_retraining(root, result, plan, registered)
    if registered:
        record_ref(root, result, ref, plan)
    if git_remote is not None:
        push_ref(root, ref, git_remote)
    pushed = f", pushed to {ref['pushed']}" if ref["pushed"] else ""
    print(f"committed {ref['commit'][:12]} as {ref['tag'] or 'no tag'}{pushed}")
    return ref


@flow(name="gaugan-retrain", log_prints=True)
def retrain_flow(repo: str = ".", force: bool = False, retries: int = 1) -> dict:
    """Retrain when DVC says ``data.source`` changed (or with ``force``), and make the result one git ref.

    In order: the workspace is checked (``retrain.commit``: nothing uncommitted but the recipe,
    i.e. params.yaml and ``.dvc`` files, on ``retrain.git_branch``); the new data is versioned (``dvc
    add``) and asked for (:func:`detect_new_data`); the remotes are checked; the plan pins the parent
    in params.yaml; the stages run up to evaluate; data and models are pushed to the DVC remote;
    then ``register`` (the registry is touched only once the rest is safe); then one commit of
    params.yaml, dvc.lock, the ``.dvc`` files and the stages' uncached outputs, tagged
    ``model/<name>/<version>``, pushed to the git remote; the version and its run get the tags
    ``git_ref`` and ``git_tag``. The summary (with each stage's seconds) is printed, returned and
    written to ``.gaugan/retrain_summary.json``.
    """
    from pipeline.orchestration.retraining import prepare_commit
    from pipeline.orchestration.retraining import summary as retrain_summary
    from pipeline.params import load_params

    started = time.perf_counter()
    root = Path(repo).resolve()
    settings = load_params(root / "params.yaml").retrain
    git_remote = prepare_commit(root, settings) if settings.commit else None
    found = detect_new_data(str(root))
    counts = found["changes"]
    if not found["changed"] and not force:
        print(f"no new data in {found['source']} (DVC: unchanged since the last run): nothing to do")
        return {"ran": False, "changes": counts}
    moved = ", ".join(f"{n} {k}" for k, n in counts.items()) if counts else "changed"
    print(f"{found['source']}: {moved}{' (forced)' if force else ''}: running the pipeline")
    dvc_remote = settings.push and default_remote(root) is not None
    check_remotes(
        str(root), dvc_remote, git_remote if settings.push else None, found["source"] if found["tracked"] else None
    )
    plan = plan_retraining_task(str(root))
    print(f"retraining: {plan.describe()}; params.yaml: {'; '.join(plan.changed) or 'unchanged'}")
    order = dvc_stages(root)
    before_register = [s for s in order if s != REGISTER_STAGE]
    outcomes, seconds = run_stages(root, before_register, retries, 10, 3600)
    if dvc_remote:
        print(f"pushed to the DVC remote {dvc_push.with_options(retries=retries)(str(root))!r}")
    if REGISTER_STAGE in order:
        more, more_seconds = run_stages(root, [REGISTER_STAGE], retries, 10, 3600)
        outcomes.update(more)
        seconds.update(more_seconds)
    result = retrain_summary(root / "params.yaml", root, plan)
    if settings.commit:
        registered = outcomes.get(REGISTER_STAGE) == "ran"  # else registration.json is an earlier version's
        result["ref"] = commit_result(str(root), result, plan, registered, git_remote if settings.push else None)
    result["seconds"] = {**seconds, "total": round(time.perf_counter() - started, 1)}
    atomic_write_json(root / RETRAIN_SUMMARY, result)
    print(f"started from {result['started_from']}; {result['decision']}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items()))
    return {"ran": True, "changes": counts, "stages": outcomes, **result}


# ------------------------------------------------------------------------------------------------
# schedule and trigger


def dataset_resource_id(repo: Path | str) -> str:
    """``gaugan.dataset.<folder>-<hash of its absolute path>``: one id per checkout."""
    root = Path(repo).resolve()
    short = digest(str(root), 8)
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in root.name) or "repo"
    return f"gaugan.dataset.{slug}-{short}"


def build_deployment(repo: Path | str = ".", cron: str | None = "0 3 * * *", name: str = DEPLOYMENT, retries: int = 1):
    """The retraining deployment: cron schedule + trigger on this repository's new-data event."""
    from prefect.deployments.runner import EntrypointType
    from prefect.events import DeploymentEventTrigger

    root = str(Path(repo).resolve())
    parameters = {"repo": root, "force": False, "retries": retries}
    trigger = DeploymentEventTrigger(
        name=f"{name}-on-new-data",
        expect={NEW_DATA_EVENT},
        match={"prefect.resource.id": dataset_resource_id(root)},
        parameters=parameters,
    )
    return retrain_flow.to_deployment(
        name=name,
        cron=cron,
        triggers=[trigger],
        parameters=parameters,
        entrypoint_type=EntrypointType.MODULE_PATH,
        tags=["gaugan"],
        description=f"Retrain the GauGAN pipeline in {root} on a schedule and when new data arrives.",
    )


def _api_healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def local_prefect_server(port: int = 4200, startup_timeout: float = 180.0) -> Iterator[str]:
    """A persistent local Prefect server (SQLite under ``PREFECT_HOME``, scheduler and triggers on)
    with ``PREFECT_API_URL`` pointed at it; yields the API URL.

    An already running server on the port is reused and left running; one started here is stopped
    on exit. Schedules need this: Prefect's temporary per-command server runs no scheduler.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = f"http://127.0.0.1:{port}/api"
    proc = None
    if not _api_healthy(url):
        log_path = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")) / f"server-{port}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        prefect_cli = Path(sys.executable).with_name("prefect")
        cmd = [
            str(prefect_cli) if prefect_cli.exists() else "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ui",
        ]
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + startup_timeout
        while not _api_healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise PipelineError(
                    f"the local Prefect server on port {port} did not start (log: {log_path}); "
                    "free the port, or set PREFECT_API_URL to a running server"
                )
            time.sleep(1)
        print(f"started a local Prefect server at {url} (log: {log_path})")
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url  # flow-run subprocesses inherit it
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def serve_schedule(
    repo: Path | str = ".", cron: str | None = "0 3 * * *", name: str = DEPLOYMENT, retries: int = 1, port: int = 4200
) -> None:
    """Serve :func:`retrain_flow` with the schedule and the new-data trigger (blocks until Ctrl-C).

    With no ``PREFECT_API_URL``, on a local Prefect server (:func:`local_prefect_server`).
    """
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    def run() -> None:
        print(
            f"new-data trigger: event {NEW_DATA_EVENT!r} for resource {dataset_resource_id(repo)!r} "
            f"(gaugan-pipeline notify-new-data --repo {Path(repo).resolve()})"
        )
        serve(build_deployment(repo, cron, name, retries), pause_on_shutdown=True)

    if PREFECT_API_URL.value():
        run()
        return
    with local_prefect_server(port) as url:
        print(f"serving on {url}; in another shell: export PREFECT_API_URL={url}")
        run()


def notify_new_data(repo: Path | str = ".", detail: dict | None = None) -> str:
    """Emit the new-data event that triggers the served retraining deployment; returns the event id.

    Needs ``PREFECT_API_URL`` (the server the deployment is served on).
    """
    import asyncio

    from prefect.events import Event
    from prefect.events.clients import get_events_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise PipelineError(
            "PREFECT_API_URL is not set: there is no Prefect server to tell; set it to the server "
            "that `gaugan-pipeline schedule` serves on (e.g. http://127.0.0.1:4200/api)"
        )
    root = Path(repo).resolve()
    event = Event(
        event=NEW_DATA_EVENT,
        resource={  # type: ignore[arg-type]  # a plain dict: pydantic validates it into prefect's Resource model
            "prefect.resource.id": dataset_resource_id(root),
            "prefect.resource.name": root.name,
        },
        payload={"repo": str(root), **(detail or {})},
    )

    async def send() -> None:
        async with get_events_client() as client:
            await client.emit(event)

    asyncio.run(send())
    return str(event.id)


# ------------------------------------------------------------------------------------------------
# failure alert

ALERT_NAME = "gaugan-flow-run-failed"  # the Webhook block and the automation
ALERTED_FLOWS = ("gaugan-pipeline", "gaugan-retrain")
# Prefect renders this Jinja template for each failed run (tojson: quotes in a message stay valid JSON).
ALERT_PAYLOAD = """{
  "event": "gaugan.flow-run.failed",
  "flow": {{ flow.name | tojson }},
  "flow_run": {{ flow_run.name | tojson }},
  "flow_run_id": "{{ flow_run.id }}",
  "state": {{ flow_run.state.name | tojson }},
  "message": {{ flow_run.state.message | tojson }},
  "deployment": {{ (deployment.name if deployment else none) | tojson }}
}"""


def set_failure_alert(url: str | None) -> str | None:
    """On the Prefect server of ``PREFECT_API_URL``: a Webhook block with ``url`` and an automation that
    calls it (POST, JSON) when a deployment run of the pipeline's flows fails or crashes; returns the
    automation's id. Replaces an earlier one; ``url`` None removes it.

    Only deployment runs (the schedule, the new-data event, the worker's runs) alert, once each: the
    pipeline run inside a failing retraining run does not alert a second time, and a ``flow run`` at
    a terminal shows its error there.
    """
    import asyncio

    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise PipelineError("PREFECT_API_URL is not set: the failure alert lives on the team's Prefect server; set it")
    return asyncio.run(_set_failure_alert(url))


async def _set_failure_alert(url: str | None) -> str | None:
    from prefect.automations import Automation
    from prefect.blocks.webhook import Webhook
    from prefect.events.actions import CallWebhook
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.types import SecretDict
    from pydantic import SecretStr

    while True:
        try:
            await (await Automation.aread(name=ALERT_NAME)).adelete()
        except ValueError:  # no (more) automation of that name
            break
    if url is None:
        return None
    webhook = Webhook(method="POST", url=SecretStr(url), headers=SecretDict({"Content-Type": "application/json"}))
    block_id = await webhook.asave(ALERT_NAME, overwrite=True)
    automation = await Automation(
        name=ALERT_NAME,
        description="POST to the team's webhook when a gaugan pipeline or retraining run fails",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=[
                {"prefect.resource.role": "flow", "prefect.resource.name": list(ALERTED_FLOWS)},
                {"prefect.resource.role": "deployment"},
            ],
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[CallWebhook(block_document_id=block_id, payload=ALERT_PAYLOAD)],
    ).acreate()
    return str(automation.id)
