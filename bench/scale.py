"""The prepared dataset at scale: one file per map (the old layout) against tar shards.

A synthetic ``folder`` source of N samples (320x256 JPEG photos of textured blocks, their label
maps and instance maps, every file unique, so DVC cannot deduplicate any) is prepared both ways,
and this times, for each layout:

- ingest (shards: this checkout's ``gaugan-pipeline ingest``; files: the ingest of ``--old-ref``,
  the project before shards, run from ``git archive`` of that commit; without it, ingest + export),
- ``dvc add`` / a no-op ``dvc status`` / ``dvc push`` / ``dvc pull`` into a fresh clone, to a
  local-folder remote and to an S3-protocol remote (moto's server on loopback, started and
  stopped here by its pid; DVC's ``dvc-s3``),
- a 1% data drop: N/100 new samples, ingest again, ``dvc add``, ``dvc push`` (local remote),
- loader throughput: samples/s of one process (one loader worker) reading training samples in
  the training order (random) at 256 px with the paper's transforms (resize to 286, random crop
  256, flip), the training loader's own dataset classes; the layouts in turn, best of 3,
- the manifest: its file size and the reader's memory for it (tracemalloc, ``PreparedDataset``),
- DVC's fixed start-up: a no-op ``dvc status`` in a repository without data, part of every DVC
  figure (on a loaded machine it is most of the shards' figures).

The no-op ``status`` and the local pull are the median of ``--repeat`` runs (default 3): one run
of a byte-bound pull moves with the disk's load.

Usage: ``python -m bench.scale [--n 20000] [--old-ref COMMIT] [--no-s3] [--repeat 3] [--tmp DIR]
[--json out.json]`` (needs ``pip install -e ".[bench]"``). Prints a table. Runs for many minutes at
the default N; ``--no-s3`` leaves the S3-protocol remote out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

from bench.workspace import ROOT

W, H, CLASSES = 320, 256, 12
BIN = str(Path(sys.executable).parent)
ENV = {
    **os.environ,
    "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "true",
    "AWS_ACCESS_KEY_ID": "bench",  # moto takes any credentials
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def write_samples(source: Path, start: int, n: int, prefix: str = "s") -> None:
    """Samples ``start .. start+n`` of the synthetic source (a function of the index alone)."""
    for sub in ("images", "labels", "instances"):
        (source / sub / "train").mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        rng = np.random.default_rng(i)
        label = np.zeros((H, W), np.uint8)
        instance = np.zeros((H, W), np.uint16)
        for k in range(1, 9):
            y, x = rng.integers(0, H - 16), rng.integers(0, W - 16)
            h, w = rng.integers(16, H // 2), rng.integers(16, W // 2)
            label[y : y + h, x : x + w] = rng.integers(0, CLASSES)
            instance[y : y + h, x : x + w] = k
        colours = rng.integers(0, 256, (CLASSES, 3), dtype=np.int16)
        image = np.clip(colours[label] + rng.integers(-24, 25, (H, W, 3), dtype=np.int16), 0, 255).astype(np.uint8)
        name = f"{prefix}{i:07d}"
        Image.fromarray(image).save(source / f"images/train/{name}.jpg", quality=90)
        Image.fromarray(label).save(source / f"labels/train/{name}.png")
        Image.fromarray(instance).save(source / f"instances/train/{name}.png")
    names = [f"class{c}" for c in range(CLASSES)]
    (source / "classes.txt").write_text("\n".join(names) + "\n")


def make_source(source: Path, start: int, n: int, prefix: str, workers: int) -> None:
    """:func:`write_samples` over ``workers`` processes."""
    from concurrent.futures import ProcessPoolExecutor

    step = -(-n // workers)
    with ProcessPoolExecutor(workers) as pool:
        for done in [
            pool.submit(write_samples, source, a, min(step, start + n - a), prefix)
            for a in range(start, start + n, step)
        ]:
            done.result()


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return round(time.perf_counter() - t, 2)


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed in {cwd}:\n{done.stdout}\n{done.stderr}")
    return round(time.perf_counter() - t, 2)


def _ingest_command(source: Path, out: Path, workers: int) -> list[str]:
    cmd = [sys.executable, "-m", "pipeline.cli", "-q", "ingest", "--format", "folder", "--source", str(source)]
    return cmd + ["--out", str(out), "--workers", str(workers)]


def ingest_shards(source: Path, out: Path, workers: int) -> None:
    _run(_ingest_command(source, out, workers), ROOT)


def old_checkout(ref: str, tmp: Path) -> Path:
    """The project at ``ref`` (``git archive``: nothing of this repository changes)."""
    old = tmp / "old-code"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    return old


def ingest_files(source: Path, out: Path, workers: int, old: Path | None) -> None:
    if old is None:  # no old code: the shards' ingest and an export make the same files
        tmp = out.with_name(out.name + "-shards")
        ingest_shards(source, tmp, workers)
        from pipeline.datasets.prepared_files import export_files

        shutil.rmtree(out, ignore_errors=True)
        export_files(tmp, out)
        return
    _run(_ingest_command(source, out, workers), old, {**ENV, "PYTHONPATH": str(old)})


class Moto:
    """moto's S3 server on a free loopback port, stopped by its pid."""

    def __enter__(self) -> Moto:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        server = shutil.which("moto_server", path=BIN) or "moto_server"
        self.proc = subprocess.Popen(
            [server, "-H", "127.0.0.1", "-p", str(self.port)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            import boto3

            s3 = boto3.client(
                "s3",
                endpoint_url=self.url,
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
            )
            s3.create_bucket(Bucket="bench")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def dvc_repo(path: Path, data: Path, remotes: dict[str, list[list[str]]]) -> None:
    """A git + DVC repository at ``path`` with ``data`` copied to data/prepared and the remotes."""
    path.mkdir()
    _run(["git", "init", "-q"], path)
    _run(["git", "config", "user.email", "bench@example.com"], path)
    _run(["git", "config", "user.name", "bench"], path)
    _run(["dvc", "init", "-q"], path)
    for commands in remotes.values():
        for cmd in commands:
            _run(["dvc", *cmd], path)
    (path / "data").mkdir()
    shutil.copytree(data, path / "data/prepared")


def dvc_times(tmp: Path, name: str, data: Path, drop, s3: Moto | None, record, repeat: int = 1) -> None:
    """add, no-op status, push and pull (fresh clone) to the local remote; the 1% drop ingested into
    the repository's data/prepared (as ``dvc repro`` runs ingest), its add and push; then push and
    pull with the S3 remote. ``record(key, seconds)`` gets each figure as it comes. The repeatable
    ones (status, the local pull into a fresh clone) are the median of ``repeat`` runs, their runs
    recorded beside it (``_runs``): they are byte-bound or start-up-bound, and a disk's or a shared
    machine's moods move one run a lot."""
    repo = tmp / f"repo-{name}"
    remotes = {"local": [["remote", "add", "local", str(tmp / f"remote-{name}")]]}
    if s3 is not None:
        endpoint = ["remote", "modify", "s3", "endpointurl", s3.url]
        timeouts = [["remote", "modify", "s3", key, "600"] for key in ("read_timeout", "connect_timeout")]
        remotes["s3"] = [["remote", "add", "s3", f"s3://bench/{name}"], endpoint, *timeouts]
    dvc_repo(repo, data, remotes)
    record("dvc_add", _run(["dvc", "add", "data/prepared"], repo))
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "data"], repo)
    _median(record, "dvc_status", [_run(["dvc", "status"], repo) for _ in range(repeat)])
    _push_pull(tmp, name, repo, "local", record, repeat)
    record("drop_ingest", _timed(lambda: drop(repo / "data/prepared")))
    record("drop_dvc_add", _run(["dvc", "add", "data/prepared"], repo))
    record("drop_dvc_push_local", _run(["dvc", "push", "-r", "local"], repo))
    _run(["git", "checkout", "-q", "--", "data/prepared.dvc"], repo)  # the first version again, for S3
    _run(["dvc", "checkout", "-q", "data/prepared"], repo)
    if s3 is not None:
        try:
            _push_pull(tmp, name, repo, "s3", record)
        except RuntimeError as err:  # a figure missing, the others kept
            record("s3_error", str(err)[-300:])


def dvc_fixed_cost(tmp: Path) -> float:
    """A no-op ``dvc status`` in a repository without data (best of 3): DVC's own start-up, which
    every figure above includes; t(N) - this is the part that grows with the data."""
    repo = tmp / "repo-empty"
    dvc_repo(repo, tmp / "repo-empty-data", {})
    best = min(_run(["dvc", "status"], repo) for _ in range(3))
    shutil.rmtree(repo)
    return best


def _push_pull(tmp: Path, name: str, repo: Path, remote: str, record, repeat: int = 1) -> None:
    record(f"dvc_push_{remote}", _run(["dvc", "push", "-r", remote], repo))
    pulls = []
    for _ in range(repeat):
        clone = tmp / f"clone-{name}-{remote}"
        _run(["git", "clone", "-q", str(repo), str(clone)], tmp)
        try:
            pulls.append(_run(["dvc", "pull", "-r", remote], clone))
        finally:
            shutil.rmtree(clone)
    _median(record, f"dvc_pull_{remote}", pulls)


def _median(record, key: str, runs: list[float]) -> None:
    record(key, statistics.median(runs))
    if len(runs) > 1:
        record(f"{key}_runs", runs)


def loader_rate(data: Path, samples: int) -> float:
    """Training samples per second of one process through the training loader's dataset classes."""
    from gaugan.data import PreparedDataset
    from gaugan.transforms import Geometry, PairTransform
    from pipeline.training.loader import SeededTransformDataset, StepBatchSampler

    dataset = SeededTransformDataset(
        PreparedDataset(data, "train"), PairTransform(Geometry(286, 256, flip=True), True, uint8=True)
    )
    sampler = StepBatchSampler(len(dataset), 1, 0, 1, 0, 0, samples)
    keys = [k for batch in sampler for k in batch]
    for key in keys[:20]:  # warm-up: imports, first reads
        dataset[key]
    t = time.perf_counter()
    for key in keys:
        dataset[key]
    return round(len(keys) / (time.perf_counter() - t), 1)


def manifest_memory(data: Path) -> dict:
    from gaugan.data import PreparedDataset

    PreparedDataset(data, "train")  # once before: the imports' and caches' memory is not the manifest's
    tracemalloc.start()
    ds = PreparedDataset(data, "train")
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del ds
    return {
        "manifest_file_mb": round((data / "manifest.parquet").stat().st_size / 2**20, 2),
        "reader_mb": round(current / 2**20, 1),
        "reader_peak_mb": round(peak / 2**20, 1),
    }


def tree_stats(root: Path) -> dict:
    files = [p for p in root.rglob("*") if p.is_file()]
    return {"files": len(files), "mb": round(sum(p.stat().st_size for p in files) / 2**20, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="samples in the synthetic source")
    parser.add_argument("--workers", type=int, default=2, help="ingest processes")
    parser.add_argument("--old-ref", default=None, help="commit of the file layout's ingest (git archive)")
    parser.add_argument("--loader-samples", type=int, default=400)
    parser.add_argument("--no-s3", action="store_true", help="skip the S3-protocol remote")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the repeatable DVC steps (median)")
    parser.add_argument("--tmp", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    def save(result: dict) -> None:  # after every figure: an interrupted run keeps what it measured
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")

    if args.tmp:
        args.tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp_name:
        result = _bench(Path(tmp_name), args, save)
    print(table(result))
    return result


def _bench(tmp: Path, args, save) -> dict:
    source, n, drop_n = tmp / "source", args.n, max(1, args.n // 100)
    result: dict = {"n": n, "drop": drop_n, "size": f"{W}x{H}", "cpu_count": os.cpu_count(), "layouts": {}}
    result["make_source_s"] = _timed(lambda: make_source(source, 0, n, "s", args.workers))
    make_source(tmp / "drop", n, drop_n, "drop", args.workers)  # the data drop, moved in before dvc_times
    old = old_checkout(args.old_ref, tmp) if args.old_ref else None
    ingest = {
        "shards": lambda o: ingest_shards(source, o, args.workers),
        "files": lambda o: ingest_files(source, o, args.workers, old),
    }
    outs = {name: tmp / f"prepared-{name}" for name in ingest}

    def recorder(name: str):
        def record(key: str, value) -> None:
            result["layouts"][name][key] = value
            save(result)

        return record

    for name, fn in ingest.items():
        result["layouts"][name] = {}
        record = recorder(name)
        record("ingest", _timed(lambda fn=fn, name=name: fn(outs[name])))
        for key, value in {**tree_stats(outs[name]), **manifest_memory(outs[name])}.items():
            record(key, value)
    for _ in range(3):  # the layouts in turn, best of 3: a shared machine's load falls on both
        for name in ingest:
            rate = loader_rate(outs[name], args.loader_samples)
            recorder(name)("loader_samples_per_s", max(rate, result["layouts"][name].get("loader_samples_per_s", 0)))
    _move_drop_in(tmp, source)
    (tmp / "repo-empty-data").mkdir()
    result["dvc_fixed_s"] = dvc_fixed_cost(tmp)
    save(result)
    with Moto() if not args.no_s3 else contextlib.nullcontext() as s3:
        for name, fn in ingest.items():
            dvc_times(tmp, name, outs[name], fn, s3, recorder(name), args.repeat)
    return result


def _move_drop_in(tmp: Path, source: Path) -> None:
    for path in (tmp / "drop").rglob("*.*"):
        target = source / path.relative_to(tmp / "drop")
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)


ROWS = [
    ("files", "files (count)"),
    ("mb", "size (MB)"),
    ("ingest", "ingest (s)"),
    ("dvc_add", "dvc add (s)"),
    ("dvc_status", "dvc status, no-op (s)"),
    ("dvc_push_local", "dvc push, local remote (s)"),
    ("dvc_pull_local", "dvc pull, local remote, fresh clone (s)"),
    ("dvc_push_s3", "dvc push, S3 on loopback (s)"),
    ("dvc_pull_s3", "dvc pull, S3 on loopback, fresh clone (s)"),
    ("drop_ingest", "1% drop: ingest (s)"),
    ("drop_dvc_add", "1% drop: dvc add (s)"),
    ("drop_dvc_push_local", "1% drop: dvc push, local (s)"),
    ("loader_samples_per_s", "loader, 1 worker, 256 px (samples/s)"),
    ("manifest_file_mb", "manifest file (MB)"),
    ("reader_mb", "manifest in the reader (MB)"),
]


def table(result: dict) -> str:
    files, shards = result["layouts"]["files"], result["layouts"]["shards"]
    head = f"N = {result['n']} samples ({result['size']}), drop = {result['drop']} samples, {result['cpu_count']} CPUs"
    head += f"; DVC's fixed start-up (no-op status without data): {result.get('dvc_fixed_s')} s"
    lines = [head, "", "| measure | files | shards | files / shards |", "|---|---|---|---|"]
    for key, label in ROWS:
        if key in files and key in shards:
            ratio = files[key] / shards[key] if shards[key] else float("inf")
            lines.append(f"| {label} | {files[key]} | {shards[key]} | {ratio:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
