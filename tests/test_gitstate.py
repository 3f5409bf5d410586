"""What makes a workspace dirty for a model's provenance: real git and DVC in a tiny project."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.versioning.gitstate import git_state


def _run(cwd: Path, *cmd: str) -> None:
    subprocess.run(list(cmd), cwd=cwd, check=True, capture_output=True, timeout=120)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw/a.txt").write_text("a")
    (tmp_path / "code.py").write_text("print(1)\n")
    (tmp_path / "params.yaml").write_text("lr: 1\n")
    (tmp_path / "dvc.yaml").write_text(
        textwrap.dedent(
            """\
            stages:
              make:
                cmd: python code.py
                deps: [raw, code.py]
                params: [lr]
                outs: [model.bin]
                metrics:
                  - metrics.json:
                      cache: false
            """
        )
    )
    _run(tmp_path, "git", "init", "-q")
    _run(tmp_path, sys.executable, "-m", "dvc", "init", "-q")
    _run(tmp_path, sys.executable, "-m", "dvc", "add", "-q", "raw")
    _run(tmp_path, "git", "add", "-A")
    _run(tmp_path, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return tmp_path


def test_what_the_pipeline_writes_leaves_the_workspace_clean(repo):
    state = git_state(repo)
    assert state.commit and not state.dirty and state.tags() == {"git_commit": state.commit, "git_dirty": "false"}
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    (repo / "model.bin").write_bytes(b"w")
    (repo / "metrics.json").write_text("{}")
    with (repo / ".gitignore").open("a") as fh:  # DVC adds its cached output beside the source's entry
        fh.write("/model.bin\n")
    assert not git_state(repo).dirty


def test_the_recipe_or_the_data_changed_is_dirty_with_a_hash_of_the_change(repo):
    (repo / "params.yaml").write_text("lr: 2\n")
    first = git_state(repo)
    assert first.dirty and first.dirty_paths == ("params.yaml",) and len(first.diff_sha256 or "") == 64
    assert first.tags()["git_dirty"] == "true" and first.tags()["git_diff_sha256"] == first.diff_sha256
    (repo / "params.yaml").write_text("lr: 3\n")
    assert git_state(repo).diff_sha256 != first.diff_sha256  # another change, another hash
    (repo / "params.yaml").write_text("lr: 2\n")
    assert git_state(repo).diff_sha256 == first.diff_sha256  # the same change, the same hash

    (repo / "raw/b.txt").write_text("b")
    _run(repo, sys.executable, "-m", "dvc", "add", "-q", "raw")  # new data: the .dvc file moved
    assert "raw.dvc" in git_state(repo).dirty_paths
    (repo / "notes.txt").write_text("untracked")
    assert "notes.txt" in git_state(repo).dirty_paths


def test_outside_git_nothing_is_claimed(tmp_path):
    state = git_state(tmp_path)
    assert state.commit is None and not state.dirty and state.tags() == {}
