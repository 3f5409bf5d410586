"""Prefect flows over the DVC pipeline: retries, logs, schedules and a trigger on new data.

DVC stays in charge of what is stale and of caching: each task runs one ``dvc repro`` stage and
Prefect's own result cache is off for them (``NO_CACHE``). A local Prefect is used by default
(an ephemeral server for one-off runs); set ``PREFECT_API_URL`` for a Prefect server, which
schedules and event triggers need (``prefect server start``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.io import atomic_write_json

STAGES = ("ingest", "train", "train-segmenter", "evaluate", "register")
NEW_DATA_EVENT = "gaugan.dataset.updated"
SNAPSHOT = Path(".gaugan") / "source_snapshot.json"


class StageFailed(RuntimeError):
    pass


def _env(repo: str) -> dict:
    """This interpreter's tools first on PATH, and an absolute MLflow store for every stage."""
    from pipeline.tracking import resolve_tracking_uri

    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["MLFLOW_TRACKING_URI"] = resolve_tracking_uri(None, Path(repo).resolve())
    return env


@task(retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE, tags=["dvc-workspace"])
def dvc_stage(stage: str, repo: str) -> None:
    """``dvc repro --single-item <stage>``, streamed line by line into the Prefect log."""
    logger = get_run_logger()
    env = _env(repo)
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    tail: deque[str] = deque(maxlen=30)
    with subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            logger.info("[%s] %s", stage, line)
    if proc.returncode != 0:
        raise StageFailed(f"stage {stage!r} failed (exit {proc.returncode}):\n" + "\n".join(tail))


@flow(name="gaugan-pipeline", log_prints=True)
def pipeline_flow(repo: str = ".", stages: list[str] | None = None) -> list[str]:
    """Run the DVC stages in order; DVC skips the ones that are up to date."""
    done = []
    for stage in stages or STAGES:
        dvc_stage(stage, repo)
        done.append(stage)
    return done


def source_snapshot(source: Path) -> dict[str, str]:
    """relative path -> size:mtime:sha256-prefix, for every file under the source folder."""
    snap = {}
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        snap[str(path.relative_to(source))] = f"{st.st_size}:{digest}"
    return snap


def detect_new_data(repo: Path) -> tuple[bool, dict, dict]:
    from pipeline.params import load_params

    params = load_params(repo / "params.yaml")
    source = repo / params.data.source
    current = source_snapshot(source) if source.is_dir() else {}
    previous = {}
    if (repo / SNAPSHOT).is_file():
        previous = json.loads((repo / SNAPSHOT).read_text())
    changed = {k for k in current if previous.get(k) != current[k]} | (set(previous) - set(current))
    return bool(changed), current, {"changed": sorted(changed)[:20], "num_changed": len(changed)}


@flow(name="gaugan-retrain", log_prints=True)
def retrain_flow(repo: str = ".", force: bool = False) -> dict:
    """Rerun the pipeline when the source folder has new, changed or removed files."""
    root = Path(repo).resolve()
    changed, snapshot, detail = detect_new_data(root)
    if not changed and not force:
        print("no new data in the source folder: nothing to do")
        return {"ran": False, **detail}
    print(f"{detail['num_changed']} new or changed source files: rerunning the pipeline")
    stages = pipeline_flow(repo=str(root))
    atomic_write_json(root / SNAPSHOT, snapshot)
    return {"ran": True, "stages": stages, **detail}


def serve_schedule(repo: str = ".", cron: str = "0 3 * * *") -> None:
    """Serve the retraining flow on a cron schedule and on the new-data event (blocks)."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    trigger = DeploymentEventTrigger(
        expect={NEW_DATA_EVENT},
        match={"prefect.resource.id": "gaugan.dataset.*"},
        parameters={"repo": repo, "force": True},
    )
    retrain_flow.serve(name="gaugan-retrain", cron=cron, triggers=[trigger], parameters={"repo": repo})


def notify_new_data(repo: str = ".") -> None:
    """Emit the event that starts the served retraining deployment (e.g. from an upload hook)."""
    from prefect.events import emit_event

    emit_event(event=NEW_DATA_EVENT, resource={"prefect.resource.id": f"gaugan.dataset.{Path(repo).resolve().name}"})
