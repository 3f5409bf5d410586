"""Training throughput on this machine: 1 and 2 processes (torchrun, gloo on CPU), and the loader alone.

    python -m bench.train_throughput [--steps 60] [--batch 8] [--workers 1]

Uses the demo settings of params.yaml on a freshly generated demo dataset in a temporary folder.
The loader figure shows whether data loading could be what limits training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.workspace import ROOT, demo_project
from pipeline.params import load_params


def make_project(tmp: Path, steps: int, batch: int, workers: int) -> Path:
    train = {
        "max_steps": steps,
        "decay_start_step": None,
        "batch_size": batch,
        "num_workers": workers,
        "checkpoint_every": 10**6,
        "sample_every": 10**6,
        "log_every": max(1, steps // 3),
        "device": "cpu",
    }
    demo_project(tmp, {"train": train}, "bench")
    return tmp


def train_ips(project: Path, nproc: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // nproc)))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "pipeline.cli",
        "train",
        "--resume",
        "never",
    ]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training with {nproc} process(es) failed:\n{(proc.stdout + proc.stderr)[-6000:]}")
    rows = (project / "outputs/train/losses.csv").read_text().splitlines()[1:]
    # skip the first logging window (warm-up), average the rest
    ips = [float(r.split(",")[-1]) for r in rows]
    steady = ips[1:] or ips
    return sum(steady) / len(steady)


def loader_ips(project: Path, batches: int, workers: int) -> float:
    from gaugan.data import PreparedDataset
    from gaugan.transforms import Geometry
    from pipeline.training.loader import build_train_loader

    params = load_params(project / "params.yaml")
    t = params.train
    dataset = PreparedDataset(project / params.data.out, "train", load_instances=params.model.use_instance)
    loader = build_train_loader(
        dataset,
        Geometry(t.load_size, t.crop_size, t.aspect_ratio, t.flip),
        params.model.use_instance,
        global_batch=t.batch_size,
        rank=0,
        world_size=1,
        seed=0,
        start_step=0,
        max_steps=batches,
        num_workers=workers,
        pin_memory=False,
    )
    start = time.perf_counter()
    n = sum(len(b["id"]) for b in loader)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp), args.steps, args.batch, args.workers)
        results = {
            "loader_images_per_sec_0_workers": round(loader_ips(project, 100, 0), 1),
            f"loader_images_per_sec_{args.workers}_workers": round(loader_ips(project, 100, args.workers), 1),
            "train_images_per_sec_1_process": round(train_ips(project, 1), 2),
            "train_images_per_sec_2_processes": round(train_ips(project, 2), 2),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
