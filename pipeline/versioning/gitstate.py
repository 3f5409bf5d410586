"""The project's git state, as recorded with runs and registered versions, and the commits of a retraining.

A model is traced to git by three tags: ``git_commit`` (HEAD when it was made), ``git_dirty``
("true" when files that make a model differed from that commit) and ``git_diff_sha256`` (a hash of
those files' contents, so two dirty workspaces can be told apart). What the pipeline itself writes
while it runs (``dvc.lock``, the stages' outputs and the ``.gitignore`` files DVC keeps beside them)
does not make a workspace dirty: those are the results, not the recipe. Everything else does: code,
``params.yaml``, ``dvc.yaml``, a raw data source's ``.dvc`` file, an untracked source file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import sha256_file

log = logging.getLogger(__name__)

# who commits when git has no identity configured (a CI runner, a fresh worker)
FALLBACK_IDENTITY = ("gaugan-pipeline", "gaugan-pipeline@localhost")


class GitError(PipelineError):
    """A git command the pipeline needs failed (a remote that does not answer, a branch not checked out)."""


@dataclass(frozen=True)
class GitState:
    commit: str | None  # HEAD; None outside a git repository or before its first commit
    dirty: bool
    diff_sha256: str | None  # None when clean
    dirty_paths: tuple[str, ...] = field(default=())

    def tags(self) -> dict[str, str]:
        """``git_commit``, ``git_dirty`` and (when dirty) ``git_diff_sha256``; empty outside git."""
        if self.commit is None and not self.dirty_paths:
            return {}
        tags = {"git_commit": self.commit or "", "git_dirty": "true" if self.dirty else "false"}
        if self.diff_sha256:
            tags["git_diff_sha256"] = self.diff_sha256
        return {k: v for k, v in tags.items() if v}


def git(root: Path | str, *args: str, check: bool = True, timeout: float = 120) -> str:
    """``git <args>`` in ``root``; its stdout. A failure raises :class:`GitError` with git's message."""
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise GitError(f"git {' '.join(args)} in {root}: {err}") from err
    if check and proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise GitError(f"git {' '.join(args)} in {root} failed: {' '.join(message[-3:]) or proc.returncode}")
    return proc.stdout


def head(root: Path | str) -> str | None:
    try:
        out = git(root, "rev-parse", "--verify", "-q", "HEAD", check=False, timeout=10).strip()
    except GitError:
        return None
    return out or None


def is_git_repo(root: Path | str) -> bool:
    try:
        return git(root, "rev-parse", "--is-inside-work-tree", check=False, timeout=10).strip() == "true"
    except GitError:
        return False


def pipeline_written(root: Path | str) -> list[str]:
    """Paths (relative to ``root``; a folder covers what is in it) that the pipeline writes itself: ``dvc.lock``
    and every stage's outputs (DVC's view of dvc.yaml, ``${...}`` resolved)."""
    import contextlib

    from dvc.repo import Repo

    root = Path(root).resolve()
    paths = ["dvc.lock"]
    try:
        with contextlib.chdir(root), Repo(str(root)) as repo:
            for stage in repo.index.stages:
                if not getattr(stage, "cmd", None):
                    continue  # a `dvc add`-ed source is the recipe, not a result
                for out in stage.outs:
                    paths.append(Path(out.fs_path).resolve().relative_to(root).as_posix())
    except Exception as err:  # not a DVC project, or dvc.yaml cannot be read: everything counts
        log.debug("no DVC outputs known in %s: %s", root, err)
    return paths


def is_pipeline_written(path: str, written: list[str]) -> bool:
    """Is ``path`` one of ``written`` (or inside one), or the .gitignore DVC keeps beside one?"""
    for w in written:
        if path == w or path.startswith(w + "/"):
            return True
        # the .gitignore DVC keeps beside a cached output
        if Path(path).name == ".gitignore" and Path(path).parent == Path(w).parent:
            return True
    return False


def changed_paths(root: Path | str) -> list[str]:
    """Paths that differ from HEAD (modified, added, deleted, untracked and not ignored; a rename's new path)."""
    entries = [
        e for e in git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all", timeout=60).split("\0") if e
    ]
    paths, i = [], 0
    while i < len(entries):
        status, path = entries[i][:2], entries[i][3:]
        i += 2 if ("R" in status or "C" in status) else 1  # a rename's or copy's source path follows it
        paths.append(path)
    return paths


def git_state(root: Path | str) -> GitState:
    """HEAD and whether the files that make a model differ from it (see the module's docstring)."""
    root = Path(root)
    if not is_git_repo(root):
        return GitState(None, False, None)
    commit = head(root)
    written = pipeline_written(root)
    dirty = sorted(p for p in changed_paths(root) if not is_pipeline_written(p, written))
    if not dirty:
        return GitState(commit, False, None)
    digest = hashlib.sha256()
    for rel in dirty:
        target = root / rel
        content = sha256_file(target) if target.is_file() else "deleted"
        digest.update(f"{rel}\0{content}\n".encode())
    return GitState(commit, True, digest.hexdigest(), tuple(dirty))


def identity_args(root: Path | str) -> list[str]:
    """``-c user.name=... -c user.email=...`` when git has no identity configured, else nothing."""
    configured = git(root, "config", "user.email", check=False, timeout=10).strip()
    if configured:
        return []
    name, email = FALLBACK_IDENTITY
    return ["-c", f"user.name={name}", "-c", f"user.email={email}"]


def current_branch(root: Path | str) -> str | None:
    out = git(root, "symbolic-ref", "--short", "-q", "HEAD", check=False, timeout=10).strip()
    return out or None


def push_remote(root: Path | str, branch: str | None) -> str | None:
    """The remote a retraining's commit goes to: the branch's upstream remote, else ``origin``, else none."""
    if branch:
        upstream = git(root, "config", f"branch.{branch}.remote", check=False, timeout=10).strip()
        if upstream:
            return upstream
    remotes = git(root, "remote", check=False, timeout=10).split()
    return "origin" if "origin" in remotes else None


def check_remote(root: Path | str, remote: str) -> None:
    """The git remote answers (``git ls-remote``), else a :class:`GitError` naming it and its URL."""
    url = git(root, "remote", "get-url", remote, check=False, timeout=10).strip()
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    proc = subprocess.run(
        ["git", "ls-remote", "--heads", remote], cwd=root, capture_output=True, text=True, timeout=120, env=env
    )
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().splitlines()
        raise GitError(
            f"the git remote {remote!r} ({url}) does not answer: {' '.join(reason[-2:])}; fix the remote "
            f"(git remote set-url {remote} URL) or remove it, then run the retraining again"
        )
