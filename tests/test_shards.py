"""The prepared dataset's shards: a standard tar that other tools read, deterministic bytes, one read
per sample, append-only data drops, compaction, damaged shards named, and the file layout round trip."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ingest_dataset, make_params
from PIL import Image

from gaugan.data import PreparedDataset
from gaugan.errors import DatasetError, MissingFileError
from pipeline.datasets.demo import generate_sample, write_demo_source
from pipeline.datasets.prepared_files import export_files, import_files
from pipeline.errors import IngestError

DEMO = {"num_train": 24, "num_val": 4, "width": 32, "height": 24, "seed": 5}
SHARD_MB = 24 * 1024 / 2**20  # 24 KiB: a few samples per shard, so the demo makes several


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _ingest(source: Path, out: Path, **data) -> dict:
    return ingest_dataset("folder", source, out, shard_size_mb=SHARD_MB, **data)


@pytest.fixture()
def source(tmp_path) -> Path:
    return write_demo_source(tmp_path / "src", make_params({"data": {"demo": DEMO}}).data.demo)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    ingest_dataset("demo", root, root / "prepared", shard_size_mb=SHARD_MB, demo=DEMO)
    return root / "prepared"


def _add_train_sample(source: Path, name: str, seed: int) -> None:
    image, label, instance = generate_sample(seed, 0, DEMO["width"], DEMO["height"])
    for sub, arr in (("images", image), ("labels", label), ("instances", instance)):
        Image.fromarray(arr).save(source / sub / "train" / f"{name}.png")


def _remove_train_samples(source: Path, ids) -> None:
    for sid in ids:
        for sub in ("images", "labels", "instances"):
            (source / sub / "train" / f"{sid}.png").unlink()


def test_shards_are_webdataset_tars_that_tarfile_and_tar_read(prepared):
    manifest = pd.read_parquet(prepared / "manifest.parquet")
    shards = sorted(set(manifest["shard"]))
    assert len(shards) >= 4 and shards[0] == "shards/train-000000.tar" and shards[-1].startswith("shards/val-")
    ds = PreparedDataset(prepared, "train")
    limit = int(SHARD_MB * 2**20)
    for name in shards:
        rows = manifest[manifest["shard"] == name].set_index("id")
        size = (prepared / name).stat().st_size
        assert size <= limit or len(rows) == 1  # bounded, unless one sample is bigger than the bound
        with tarfile.open(prepared / name) as tar:
            members = tar.getmembers()
            assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
            for m in members:  # the manifest's offsets and sizes are the tar's own
                sid, suffix = m.name.split(".", 1)  # WebDataset: key = name up to the first dot
                kind = {"png": "image", "label.png": "label", "instance.png": "instance", "edge.png": "edge"}[suffix]
                assert (rows.loc[sid, f"{kind}_offset"], rows.loc[sid, f"{kind}_size"]) == (m.offset_data, m.size)
                if name.startswith("shards/train"):
                    assert tar.extractfile(m).read() == ds.member_bytes(ds.ids.index(sid))[kind]
        assert [m.name for m in members] == [
            f"{sid}{s}" for sid in sorted(rows.index) for s in (".png", ".label.png", ".instance.png", ".edge.png")
        ]
        if shutil.which("tar"):
            listed = subprocess.run(["tar", "-tf", prepared / name], capture_output=True, text=True, check=True)
            assert listed.stdout.split() == [m.name for m in members] and listed.stderr == ""


def test_the_same_input_gives_the_same_shards_whatever_the_workers(prepared, tmp_path):
    ingest_dataset("demo", tmp_path, tmp_path / "again", shard_size_mb=SHARD_MB, demo=DEMO, workers=2)
    assert _tree(tmp_path / "again") == _tree(prepared)


def test_a_data_drop_adds_new_shards_and_leaves_every_old_byte(source, tmp_path):
    out = tmp_path / "prepared"
    _ingest(source, out)
    before = _tree(out)
    _add_train_sample(source, "drop_0001", 71)  # the new data: ids after the old ones and one before
    _add_train_sample(source, "a_drop_0002", 72)
    stats = _ingest(source, out)
    after = _tree(out)
    assert (stats["processed_this_run"], stats["reused"]) == (2, 28)
    old_train = sorted(k for k in before if k.startswith("shards/train"))
    new = sorted(set(after) - set(before))
    assert new == stats["shards"]["written"] == [f"shards/train-{len(old_train):06d}.tar"]
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert changed == ["manifest.parquet", "stats.json"]  # every old shard byte for byte
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("id")
    assert set(manifest.loc[["drop_0001", "a_drop_0002"], "shard"]) == {new[0]}
    ds = PreparedDataset(out, "train")
    assert ds.ids[0] == "a_drop_0002" and len(ds) == 26 and ds[0]["label"].shape == (24, 32)


def test_kept_samples_count_classes_from_the_manifest_without_decoding(source, tmp_path, monkeypatch):
    """A data drop decodes only the new samples; the class statistics equal a fresh ingest's, also
    from a manifest written before the count columns existed (its kept samples are decoded once)."""
    from pipeline.datasets import writer

    out, fresh = tmp_path / "prepared", tmp_path / "fresh"
    _ingest(source, out)
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("id")
    label = np.array(Image.open(source / "labels/train/demo_train_000003.png"))
    values, pixels = np.unique(label, return_counts=True)
    row = manifest.loc["demo_train_000003"]
    assert list(row["label_classes"]) == values.tolist() and list(row["label_pixels"]) == pixels.tolist()
    _add_train_sample(source, "drop_0001", 71)
    opened = []
    real_open = writer.Image.open
    monkeypatch.setattr(writer.Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    stats = _ingest(source, out)
    assert stats["reused"] == 28 and opened == []  # no kept label decoded (the new one is read by its parser)
    monkeypatch.undo()
    expected = _ingest(source, fresh)["class_pixel_frequency"]
    assert stats["class_pixel_frequency"] == expected
    old = pd.read_parquet(out / "manifest.parquet").drop(columns=["label_classes", "label_pixels"])
    old.to_parquet(out / "manifest.parquet", index=False)  # a manifest of the first shard version
    stats = _ingest(source, out)
    assert (stats["processed_this_run"], stats["reused"]) == (0, 29) and stats["class_pixel_frequency"] == expected
    counts = [
        {r["id"]: (list(r["label_classes"]), list(r["label_pixels"])) for _, r in pd.read_parquet(p).iterrows()}
        for p in (out / "manifest.parquet", fresh / "manifest.parquet")
    ]
    assert counts[0] == counts[1]  # the columns are written again for the kept samples


def test_dead_bytes_stay_until_compaction_rewrites_only_that_shard(source, tmp_path):
    out = tmp_path / "prepared"
    _ingest(source, out, compact_dead_fraction=0.5)
    manifest = pd.read_parquet(out / "manifest.parquet")
    first = manifest[manifest["shard"] == "shards/train-000000.tar"]["id"].tolist()
    assert len(first) >= 3
    before = _tree(out)
    _remove_train_samples(source, first[:1])  # under half of the shard dead: it stays as it was
    stats = _ingest(source, out, compact_dead_fraction=0.5)
    assert (
        stats["shards"]["compacted"] == []
        and _tree(out)["shards/train-000000.tar"] == before["shards/train-000000.tar"]
    )
    kept = PreparedDataset(out, "train")
    survivor_bytes = kept.member_bytes(kept.ids.index(first[-1]))
    _remove_train_samples(source, first[1 : len(first) - 1])  # now only one live sample: rewritten
    stats = _ingest(source, out, compact_dead_fraction=0.5)
    assert stats["shards"] == {
        "written": [],
        "kept": stats["shards"]["kept"],
        "compacted": ["shards/train-000000.tar"],
        "removed": [],
    }
    after = _tree(out)
    assert len(after["shards/train-000000.tar"]) < len(before["shards/train-000000.tar"]) / 2
    assert [k for k in before if k not in after] == []
    assert [k for k in before if after[k] != before[k]] == ["manifest.parquet", "shards/train-000000.tar", "stats.json"]
    survivor = PreparedDataset(out, "train")
    assert survivor.member_bytes(survivor.ids.index(first[-1])) == survivor_bytes
    with tarfile.open(out / "shards/train-000000.tar") as tar:
        assert [m.name.split(".")[0] for m in tar.getmembers()] == [first[-1]] * 4
    _remove_train_samples(source, first[-1:])  # nothing lives in it: the shard goes
    stats = _ingest(source, out, compact_dead_fraction=0.5)
    assert stats["shards"]["removed"] == ["shards/train-000000.tar"] and not (out / "shards/train-000000.tar").exists()
    assert len(PreparedDataset(out, "train")) == 24 - len(first)


def _damage(root: Path, how: str) -> tuple[str, str]:
    """Damage the dataset at ``root``; returns (shard, sample id) the error must name."""
    manifest = pd.read_parquet(root / "manifest.parquet")
    row = manifest[manifest["split"] == "train"].sort_values("id").iloc[-1]
    path = root / row["shard"]
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: int(row["offset"]) + 100]))
    elif how == "corrupt":
        data[int(row["label_offset"]) + 40] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "past_end":
        manifest.loc[manifest["id"] == row["id"], "length"] = len(data) + 512
        manifest.to_parquet(root / "manifest.parquet", index=False)
    else:
        path.unlink()
    return str(row["shard"]), str(row["id"])


DAMAGE = {
    "truncated": "shard ends at",
    "corrupt": "sha256 differs from the manifest",
    "past_end": "shard ends at",
    "missing": "shard missing",
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_damaged_shard_is_named_with_the_sample_when_read_and_at_ingest(source, tmp_path, how):
    out = tmp_path / "prepared"
    _ingest(source, out)
    shard, sid = _damage(out, how)
    ds = PreparedDataset(out, "train")
    error = MissingFileError if how == "missing" else DatasetError
    with pytest.raises(error, match=DAMAGE[how]) as err:
        ds[ds.ids.index(sid)]
    assert shard in str(err.value) and repr(sid) in str(err.value)
    before = _tree(out)
    with pytest.raises(IngestError, match=DAMAGE[how]) as err:  # the next ingest stops before writing
        _ingest(source, out, on_error="skip")
    named = [s for s in (ds.ids if how == "missing" else [sid]) if repr(s) in str(err.value)]  # missing: its first
    assert shard in str(err.value) and len(named) == 1
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "src"]


def test_files_and_back_give_the_shards_of_a_fresh_ingest(prepared, tmp_path):
    files = tmp_path / "files"
    assert export_files(prepared, files) == 28
    assert not list(files.glob("shards")) and (files / "labels/train/demo_train_000000.png").is_file()
    assert (files / "classes.json").read_bytes() == (prepared / "classes.json").read_bytes()
    back = tmp_path / "back"
    assert import_files(files, back, SHARD_MB) == 28
    original, packed = _tree(prepared), _tree(back)
    shards = sorted(k for k in original if k.startswith("shards/"))
    assert shards == sorted(k for k in packed if k.startswith("shards/"))
    assert all(original[k] == packed[k] for k in shards)
    pd.testing.assert_frame_equal(
        pd.read_parquet(back / "manifest.parquet"), pd.read_parquet(prepared / "manifest.parquet")
    )
    a, b = PreparedDataset(files, "val"), PreparedDataset(back, "val")
    for i in range(len(a)):
        for key in ("image", "label", "instance"):
            np.testing.assert_array_equal(a[i][key], b[i][key])
    with pytest.raises(IngestError, match="already in shards"):
        import_files(prepared, tmp_path / "again", SHARD_MB)


def test_the_cli_converts_both_ways(prepared, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    runner = CliRunner()
    done = runner.invoke(app, ["prepared", "export", "--data", str(prepared), "--out", str(tmp_path / "f")])
    assert done.exit_code == 0 and "28 samples" in done.output
    done = runner.invoke(app, ["prepared", "import", "--files", str(tmp_path / "f"), "--out", str(tmp_path / "s")])
    assert done.exit_code == 0 and PreparedDataset(tmp_path / "s", "train").sharded
    done = runner.invoke(app, ["prepared", "export", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert done.exit_code == 1 and "no manifest" in done.output


@pytest.mark.slow
def test_ingest_over_a_dask_cluster_writes_the_bytes_of_the_local_pool(prepared, tmp_path):
    """Two worker processes of a Dask LocalCluster on loopback, started and closed here."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        ingest_dataset(
            "demo",
            tmp_path,
            tmp_path / "dask",
            shard_size_mb=SHARD_MB,
            demo=DEMO,
            dask_address=cluster.scheduler_address,
        )
    assert _tree(tmp_path / "dask") == _tree(prepared)
    with pytest.raises(IngestError, match="no Dask scheduler answers"):
        ingest_dataset("demo", tmp_path, tmp_path / "none", demo=DEMO, dask_address="tcp://127.0.0.1:9")


def _dvc(repo: Path, *args: str) -> str:
    import os
    import sys

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_after_a_data_drop_dvc_pushes_only_the_new_shard_manifest_and_stats(source, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    _dvc(repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    _ingest(source, repo / "data/prepared")
    _dvc(repo, "add", "data/prepared")
    first = _dvc(repo, "push")
    shards = len(list((repo / "data/prepared/shards").iterdir()))
    assert f"{shards + 3 + 1} files pushed" in first  # shards, manifest, classes, stats, and DVC's .dir listing
    _add_train_sample(source, "drop_0001", 71)
    _ingest(source, repo / "data/prepared")
    _dvc(repo, "add", "data/prepared")
    assert "4 files pushed" in _dvc(repo, "push")  # the new shard, the manifest, stats and the new .dir listing
