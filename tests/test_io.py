"""Atomic writes: readable by the team (umask mode, not mkstemp's 0600), and nothing half-written."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from gaugan.checkpoint import atomic_save
from pipeline.io import atomic_path, atomic_write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_files_get_the_umask_mode(tmp_path, umask_022):
    atomic_write_json(tmp_path / "metrics.json", {"fid": 1.5})
    atomic_save({"w": torch.zeros(2)}, tmp_path / "generator.pt")
    for name in ("metrics.json", "generator.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"fid": 1.5}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"fid": 1.0})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"fid": object()})  # not JSON: fails before anything is written
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "prepared") as tmp:
        tmp.mkdir()
        (tmp / "half.png").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"fid": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
