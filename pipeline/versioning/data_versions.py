"""The raw data source as a DVC-tracked input: versioned with ``dvc add``, and asked whether it changed.

``data.source`` is the ingest stage's first dependency. Tracked with ``dvc add`` (``<source>.dvc``
beside it, committed with git), each version of the raw data is in DVC's cache and remote, so a
commit names the exact data a model was trained on and ``dvc pull`` brings it back. A new upload
is a new version: ``dvc add`` again (``gaugan-pipeline demo-data --drop`` does it for the demo).
Whether there is new data to retrain on is DVC's answer, not a file list of our own: the source's
hash now against the one ``dvc.lock`` recorded when ingest last ran (``dvc status``), and which
files moved against the last commit (``dvc diff``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.errors import PipelineError


class DVCError(PipelineError):
    """A DVC command the pipeline needs failed."""


def dvc(root: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``dvc <args>`` in ``root`` with the pipeline's tool environment (``env`` added); output captured."""
    from pipeline.versioning.tools import tool_env

    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env={**tool_env(root), **(env or {})},
        capture_output=True,
        text=True,
    )
    if check and proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise DVCError(f"dvc {' '.join(args)} in {root} failed: {' '.join(lines[-3:]) or proc.returncode}")
    return proc


def dvc_root(path: Path) -> Path | None:
    """The DVC project that holds ``path`` (the nearest folder above it with a ``.dvc`` folder)."""
    for folder in [path.resolve(), *path.resolve().parents]:
        if (folder / ".dvc").is_dir():
            return folder
    return None


def dvc_file(source: Path) -> Path:
    return source.with_name(source.name + ".dvc")


def is_tracked(source: Path) -> bool:
    return dvc_file(source).is_file()


def track(source: Path) -> bool:
    """``dvc add`` the source folder when it is new or differs from its ``.dvc`` file; True if that
    changed the ``.dvc`` file. Outside a DVC project: False, nothing done."""
    root = dvc_root(source)
    if root is None:
        return False
    rel = source.resolve().relative_to(root).as_posix()
    before = dvc_file(source).read_bytes() if is_tracked(source) else None
    if before is not None:
        status = last_json(dvc(root, "status", "--json", f"{rel}.dvc").stdout)
        if not status:
            return False
    dvc(root, "add", "-q", rel)
    return dvc_file(source).read_bytes() != before


def source_changed(root: Path, source: str) -> bool:
    """Does ``source`` differ from what the stages depending on it last ran with (``dvc status``)?
    True too when no stage has run with it yet."""
    status = last_json(dvc(root, "status", "--json").stdout)
    target = Path(source).as_posix().rstrip("/")
    for entries in status.values():
        for entry in entries:
            if isinstance(entry, dict) and target in {k.rstrip("/") for k in entry.get("changed deps", {})}:
                return True
    return False


def source_diff(root: Path, source: str) -> dict[str, int]:
    """Files added, modified and deleted under ``source`` since the last commit (``dvc diff``)."""
    proc = dvc(root, "diff", "--json", "--targets", source, check=False)
    diff = last_json(proc.stdout) if proc.returncode == 0 else {}
    files = {k: [e for e in diff.get(k, []) if not str(e.get("path", "")).endswith("/")] for k in diff}
    return {
        "added": len(files.get("added", [])),
        "changed": len(files.get("modified", [])) + len(files.get("renamed", [])),
        "removed": len(files.get("deleted", [])),
    }


def last_json(text: str) -> dict:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {}
