"""GPU speed figures, one markdown table row each (``bench/gpu_check.sh`` runs it with the path checks).

Rows:
- ``train_step <variant>``: one G+D step of :class:`gaugan.trainer.GauGANTrainer` at the paper's
  ADE20K setting (256 px, ngf/ndf 64, 150 classes + dontcare, n_layers_D 4, VGG loss with random
  weights of the real layout, no EMA), batch ``--batch``: fp32, bf16, bf16 + channels_last,
  bf16 + channels_last + torch.compile; ms/step, images/s and peak memory
  (``torch.cuda.max_memory_allocated``);
- ``ddp_torchrun_1gpu``: the same trainer under ``torchrun --nproc-per-node=1`` with
  ``distribute()`` (NCCL on GPU, gloo on CPU), steps timed;
- ``demo_train_stage`` / ``demo_segmenter_stage`` / ``demo_evaluate_stage``: the pipeline's own
  stages on the demo dataset on this device, the train stage under a one-process torchrun; only
  when the pipeline's dependencies (pydantic, MLflow...) import, otherwise one ``skip`` row saying
  which is missing.

Only torch, torchvision and numpy are needed for the ``train_step`` and ``ddp`` rows. ``--cpu``
runs the same code paths tiny on the CPU (a 64 px model with 8 channels, a few steps) so that the
script is known to work where no GPU is at hand; its figures mean nothing.

Usage: ``python -m bench.gpu_speed [--cpu] [--batch N] [--steps N] [--no-compile] [--no-pipeline]
[--rows-only]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from bench.train_step import make_batch, sync
from bench.workspace import ROOT, demo_project
from gaugan.config import GauGANConfig
from gaugan.trainer import GauGANTrainer, TrainOptions

VARIANTS = {  # name: (precision, channels_last, compile)
    "fp32": ("fp32", False, False),
    "bf16": ("bf16", False, False),
    "bf16+channels_last": ("bf16", True, False),
    "bf16+channels_last+nhwc_norms": ("bf16", True, False),
    "bf16+channels_last+compile": ("bf16", True, True),
}


def paper_config(dry: bool) -> GauGANConfig:
    if dry:
        return GauGANConfig(label_nc=6, use_instance=False, ngf=8, ndf=8, spade_hidden=16, n_layers_D=2, crop_size=64)
    return GauGANConfig(label_nc=150, contain_dontcare_label=True, use_instance=False, crop_size=256)


def random_vgg(tmp: Path) -> str:
    from gaugan.vgg import VGG19_FILE, vgg19_features

    path = tmp / VGG19_FILE
    if not path.exists():
        torch.save({f"features.{k}": v for k, v in vgg19_features().state_dict().items()}, path)
    return str(path)


def time_steps(trainer: GauGANTrainer, batch: dict, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per train_step, after ``warmup`` steps (compilation happens there)."""
    for _ in range(warmup):
        trainer.train_step(batch)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    sync(device)
    return (time.perf_counter() - start) / steps


def train_row(name: str, args, device: torch.device, vgg: str) -> tuple[str, str, str]:
    precision, channels_last, compile_ = VARIANTS[name]
    config = paper_config(args.cpu)
    options = TrainOptions(
        vgg_weights=vgg,
        ema_decay=None,
        precision=precision,
        channels_last=channels_last,
        compile=compile_,
        total_steps=10**6,
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    trainer = GauGANTrainer(config, options, device)
    if name.endswith("nhwc_norms"):
        keep_nhwc_after_instance_norms(trainer.discriminator)
    seconds = time_steps(trainer, make_batch(config, args.batch, device), device, 3 if compile_ else 1, args.steps)
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB peak" if device.type == "cuda" else "CPU"
    detail = f"{1000 * seconds:.1f} ms/step, {args.batch / seconds:.2f} img/s, {peak}"
    return f"train_step {name}", "ok", f"{detail} ({config.crop_size} px, ngf {config.ngf}, batch {args.batch})"


def keep_nhwc_after_instance_norms(module: torch.nn.Module) -> None:
    """InstanceNorm returns NCHW from an NHWC input: give the next layer NHWC again (issue #16: does
    keeping D's activations NHWC pay on the GPU?)."""

    def restore(norm, inputs, output):
        if inputs[0].is_contiguous(memory_format=torch.channels_last):
            return output.contiguous(memory_format=torch.channels_last)
        return output

    for m in module.modules():
        if isinstance(m, torch.nn.InstanceNorm2d):
            m.register_forward_hook(restore)


def ddp_child(args) -> None:
    """Inside torchrun: one rank, distribute(), timed steps; prints a RESULT line."""
    import torch.distributed as dist

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if not args.cpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    config = paper_config(args.cpu)
    with tempfile.TemporaryDirectory() as tmp:
        precision = "bf16" if device.type == "cuda" else "fp32"
        options = TrainOptions(vgg_weights=random_vgg(Path(tmp)), ema_decay=None, precision=precision)
        torch.manual_seed(0)
        trainer = GauGANTrainer(config, options, device)
        trainer.distribute()
        seconds = time_steps(trainer, make_batch(config, args.batch, device), device, 1, args.steps)
    dist.destroy_process_group()
    print("RESULT " + json.dumps({"seconds": seconds, "precision": precision}), flush=True)


def ddp_row(args) -> tuple[str, str, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
    cmd += ["-m", "bench.gpu_speed", "--ddp-child", "--batch", str(args.batch), "--steps", str(args.steps)]
    cmd += ["--cpu"] if args.cpu else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return "ddp_torchrun_1gpu", "FAIL", (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    out = json.loads(lines[-1][len("RESULT ") :])
    s = out["seconds"]
    return "ddp_torchrun_1gpu", "ok", f"{1000 * s:.1f} ms/step, {args.batch / s:.2f} img/s ({out['precision']})"


def pipeline_missing() -> str | None:
    for module in ("pydantic", "mlflow", "yaml", "dvc", "pipeline.params", "pipeline.cli"):
        try:
            __import__(module)
        except ImportError as err:
            return f"{module} ({err.__class__.__name__})"
    return None


def stage_project(tmp: Path, device: str, dry: bool) -> Path:
    """A project folder: params.yaml's demo settings on this device, shortened; the data prepared."""
    steps = 2 if dry else 200
    sections: dict[str, dict] = {
        "data": {"demo": {"num_train": 16 if dry else 240, "num_val": 8 if dry else 48}},
        "train": {
            "max_steps": steps,
            "decay_start_step": None,
            "checkpoint_every": 10**6,
            "sample_every": 10**6,
            "device": device,
            "log_every": max(1, steps // 4),
        },
        "segmenter": {"device": device, "steps": 2 if dry else 200},
        "evaluate": {"device": device, "stats_cache": None, "fid_bootstrap": 2 if dry else 50},
    }
    demo_project(tmp, sections, "gpu-check")
    return tmp


def stage_rows(args, device: torch.device) -> list[tuple[str, str, str]]:
    missing = pipeline_missing()
    if args.no_pipeline or missing:
        return [("demo stages", "skip", "--no-pipeline" if args.no_pipeline else f"cannot import {missing}")]
    rows = []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with tempfile.TemporaryDirectory() as tmp:
        project = stage_project(Path(tmp), device.type, args.cpu)
        run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m"]
        stages = {
            "demo_train_stage": run + ["pipeline.cli", "train", "--resume", "never"],
            "demo_segmenter_stage": [sys.executable, "-m", "pipeline.cli", "train-segmenter"],
            "demo_evaluate_stage": [sys.executable, "-m", "pipeline.cli", "evaluate"],
        }
        for name, cmd in stages.items():
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                rows.append((name, "FAIL", (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]))
                break
            rows.append((name, "ok", f"{seconds:.1f} s wall{_stage_note(project, name)}"))
    return rows


def _stage_note(project: Path, name: str) -> str:
    if name == "demo_train_stage":
        m = json.loads((project / "outputs/train/metrics.json").read_text())
        return f", {m.get('steps')} steps, {m.get('images_per_sec', float('nan')):.1f} img/s"
    if name == "demo_evaluate_stage":
        m = json.loads((project / "outputs/evaluate/metrics.json").read_text())
        modes = m.get("precision_modes") or {}
        where = f"{modes.get('device_name', m.get('device', '?'))}, features {modes.get('features', '?')}"
        return f", FID {m.get('fid', float('nan')):.2f}, mIoU {m.get('miou', float('nan')):.3f} ({where})"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="the same code paths, tiny, on the CPU")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 4 on GPU, 2 on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10 on GPU, 2 on CPU)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the demo stages")
    parser.add_argument("--rows-only", action="store_true", help="no table header")
    parser.add_argument("--ddp-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch = args.batch or (2 if args.cpu else 4)
    args.steps = args.steps or (2 if args.cpu else 10)
    if args.ddp_child:
        ddp_child(args)
        return 0
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_speed: no CUDA device visible; run with --cpu for the reduced mode", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    if not args.rows_only:
        where = "CPU (dry run)" if args.cpu else torch.cuda.get_device_name(device)
        print(f"| item ({where}, torch {torch.__version__}) | result | detail |\n|---|---|---|", flush=True)
    return run_items(args, device)


def run_items(args, device: torch.device) -> int:
    """Print each item's row; 1 when one failed (the others still run)."""
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        vgg = random_vgg(Path(tmp))
        names = [n for n in VARIANTS if not (args.no_compile and "compile" in n)]
        jobs = [lambda n=n: [train_row(n, args, device, vgg)] for n in names]
        jobs += [lambda: [ddp_row(args)], lambda: stage_rows(args, device)]
        for job in jobs:
            try:
                rows = job()
            except Exception as err:  # noqa: BLE001 - one failing item is a FAIL row, the others still run
                traceback.print_exc(file=sys.stderr)
                message = str(err).splitlines()[0] if str(err) else ""
                rows = [("(item)", "FAIL", f"{type(err).__name__}: {message}")]
            for name, result, detail in rows:
                failed = failed or result == "FAIL"
                print(f"| {name} | {result} | {detail} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
