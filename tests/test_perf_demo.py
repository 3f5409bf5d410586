"""The demo runner: the two training stages side by side, recorded so that dvc finds all up to date."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_project, write_project_params
from test_pipeline_e2e import PROJECT_FILES, TINY

from pipeline.orchestration.side_by_side import stage_command


def test_stage_command_is_dvc_yamls_with_params(tmp_path):
    root = copy_project(tmp_path, PROJECT_FILES)
    write_project_params(root, {**TINY, "train": {**TINY["train"], "nproc": 3}})
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)  # a project is a git clone, as DVC expects
    cmd = stage_command(root, "train")
    assert "--nproc-per-node=3" in cmd and "${" not in cmd
    assert cmd.endswith("gaugan-pipeline train --params params.yaml")


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="side by side only with 2 cores or more")
def test_demo_runs_the_training_stages_side_by_side_and_dvc_agrees(tmp_path):
    (tmp_path / "project").mkdir()
    root = copy_project(tmp_path / "project", PROJECT_FILES)
    write_project_params(root, TINY)
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        PREFECT_HOME=str(root / ".prefect"),
    )
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo"], cwd=root, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "running train, train-segmenter side by side" in proc.stdout
    assert "[train-segmenter]" in proc.stdout and "[train]" in proc.stdout
    metrics = json.loads((root / "outputs/evaluate/metrics.json").read_text())
    assert metrics["fid"] == metrics["fid"]  # a number, not NaN: evaluate ran on both trained models
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"], cwd=root, env=env, capture_output=True, text=True
    )
    # all up to date; resolve-parent always runs (it asks whether train.init_from's alias moved)
    assert json.loads(status.stdout.strip().splitlines()[-1]) == {"resolve-parent": ["always changed"]}, status.stdout
