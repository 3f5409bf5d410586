"""Two stages that read only upstream outputs, run at once with the cores shared out, then recorded by DVC.

``train`` and ``train-segmenter`` both read only the prepared data and the parent folder and write
separate outputs. On a CPU with several cores, running them side by side, each with its share of
the cores (``OMP_NUM_THREADS``), beats ``dvc repro`` running them one after the other (a 64 px
model leaves a second thread of one process nearly idle). Their commands are dvc.yaml's own, and
``dvc commit --force`` then records them in dvc.lock as ``dvc repro`` would: a later ``dvc repro``
finds them up to date. The demo and the flows use it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from pathlib import Path

from pipeline.errors import PipelineError

SIDE_BY_SIDE = ("train", "train-segmenter")  # independent stages: both read only the prepared data


def changed_stages(root: Path, env: dict, stages) -> set[str]:
    """Of ``stages``, those whose command would run (``dvc status``: changed deps, params or missing outputs)."""
    from pipeline.versioning.data_versions import dvc, last_json

    proc = dvc(root, "status", "--json", *stages, check=False, env=env)
    return set(last_json(proc.stdout)) if proc.returncode == 0 else set()  # else dvc repro says what is wrong


def stage_command(root: Path, stage: str) -> str:
    """dvc.yaml's ``cmd`` of ``stage`` as DVC resolves it (``${key.path}`` values from params.yaml)."""
    from dvc.repo import Repo

    # in process, DVC reads the params files from the working directory, not from the repo it opens
    with contextlib.chdir(root), Repo(str(root)) as dvc_repo:
        return dvc_repo.stage.collect(stage)[0].cmd


def run_side_by_side(root: Path, env: dict, stages: list[str]) -> None:
    """Run the stages' commands at once, the cores shared out (``OMP_NUM_THREADS``); lines prefixed."""
    threads = str(max(1, (os.cpu_count() or 1) // len(stages)))
    print(f"running {', '.join(stages)} side by side, {threads} thread(s) each", flush=True)
    procs, pumps = {}, []
    for stage in stages:
        procs[stage] = subprocess.Popen(
            stage_command(root, stage),
            shell=True,
            cwd=root,
            env={**env, "OMP_NUM_THREADS": threads},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        pump = threading.Thread(target=_prefix_lines, args=(procs[stage], stage), daemon=True)
        pump.start()
        pumps.append(pump)
    failed = [stage for stage, proc in procs.items() if proc.wait() != 0]
    for pump in pumps:
        pump.join()
    if failed:
        raise PipelineError(f"stage {', '.join(failed)} failed; its error is printed above (lines [{failed[0]}])")


def _prefix_lines(proc: subprocess.Popen, stage: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        print(f"[{stage}] {line}", end="", flush=True)
