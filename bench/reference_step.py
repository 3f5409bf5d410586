"""Side by side: one training step (a G update and a D update) of the NVlabs/SPADE reference code
and of this project, at the paper's ADE20K setting (ngf/ndf 64, 150 classes + dontcare, no
instance edges, n_layers_D 4, two D scales, spectral SPADE over batch norm, batch 1, VGG loss on
with random weights, no EMA), at 256 and 128 px.

Each measurement is its own process (a fresh allocator and thread pool), reference and project
alternating, ``--rounds`` times per size; the medians of the timed steps and their ratio are
printed. The reference runs from ``--reference DIR`` (a checkout of NVlabs/SPADE, never copied
here; its models/networks/sync_batchnorm installed as its README says) through its own option
parser and ``Pix2PixTrainer``; its child process patches, at run
time only: torchvision's ``vgg19(pretrained=True)`` to random weights (the ImageNet file cannot be
downloaded here; same cost), ``dill`` to the standard ``pickle`` when dill is not installed (its
options are pickled with it), and ``nn.Module.cuda`` to a no-op on a machine without CUDA (its
``VGGLoss`` calls ``.cuda()`` unconditionally). The checkout is not modified.

Usage: ``python -m bench.reference_step --reference /tmp/spade-ref [--sizes 256 128] [--rounds 2]
[--steps 3] [--warmup 1] [--precision fp32|bf16] [--channels-last] [--baseline OTHER_CHECKOUT]
[--json out.json]``. ``--baseline`` times another checkout of this project too (before/after a
change); per-step process CPU time is recorded next to wall time (useful on a loaded machine).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def in_checkout(folder: Path) -> dict:
    """Keyword arguments of ``subprocess.run`` for a child ``python -m bench.<name>`` started in
    ``folder``: ``-m`` puts that folder first on the child's import path (another checkout's
    ``gaugan``, or the reference's ``models``, ``options``, ``trainers``), and this repository follows
    on PYTHONPATH so that ``bench`` imports (a checkout with a ``bench`` package of its own runs its own)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {"cwd": folder, "env": {**os.environ, "PYTHONPATH": path}}


def _imported_from(module, checkout: Path) -> None:
    where = Path(inspect.getfile(module)).resolve()
    if not where.is_relative_to(checkout.resolve()):
        sys.exit(
            f"{module.__name__} imported from {where}, not from {checkout}: start this process there (in_checkout)"
        )


# ----------------------------------------------------------------------------- children
@functools.cache
def load_reference(reference: Path):
    """The reference's ``(TrainOptions, Pix2PixTrainer)`` classes, imported from the checkout (this
    process started in it: :func:`in_checkout`) with the run-time patches of this module's docstring
    (random VGG19 weights, dill, ``.cuda()`` on CPU)."""
    import torch
    import torchvision

    plain_vgg19 = torchvision.models.vgg19

    def random_vgg19(pretrained: bool = False, **kwargs):
        return plain_vgg19(weights=None)

    torchvision.models.vgg19 = random_vgg19
    sys.modules.setdefault("dill", __import__("pickle"))  # its util imports dill only to pickle options
    if not torch.cuda.is_available():
        torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    from options.train_options import TrainOptions  # the reference's own parser
    from trainers.pix2pix_trainer import Pix2PixTrainer

    _imported_from(Pix2PixTrainer, reference)
    return TrainOptions, Pix2PixTrainer


def reference_options(reference: Path, workdir: str, args: list[str]):
    """The reference's options parsed from ``args`` (after a name, checkpoints dir and GPU ids), quietly."""
    import torch

    TrainOptions, _ = load_reference(reference)
    sys.argv = [
        "train.py",
        *("--name", "bench", "--checkpoints_dir", workdir),
        *("--gpu_ids", "0" if torch.cuda.is_available() else "-1"),
        *args,
    ]
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            return TrainOptions().parse()
        finally:
            sys.stdout = stdout


def _reference_trainer(reference: Path, size: int, workdir: str):
    import torch

    _, Pix2PixTrainer = load_reference(reference)
    opt = reference_options(
        reference,
        workdir,
        [
            *("--dataset_mode", "ade20k", "--dataroot", workdir),
            *("--batchSize", "1", "--crop_size", str(size), "--load_size", str(size)),
            *("--label_nc", "150", "--contain_dontcare_label", "--no_instance"),
        ],
    )
    trainer = Pix2PixTrainer(opt)
    g = torch.Generator().manual_seed(0)
    data = {
        "label": torch.randint(0, 151, (1, 1, size, size), generator=g),
        "instance": torch.zeros(1),
        "image": torch.rand(1, 3, size, size, generator=g) * 2 - 1,
        "path": ["bench"],
    }

    def step() -> None:
        trainer.run_generator_one_step(dict(data))
        trainer.run_discriminator_one_step(dict(data))

    return step


def _project_trainer(size: int, precision: str, channels_last: bool, compile_: bool, root: Path):
    """One step of this project's trainer, ``gaugan`` imported from ``root`` (this process started in it)."""
    import torch

    import gaugan
    from gaugan.config import GauGANConfig
    from gaugan.trainer import GauGANTrainer, TrainOptions
    from gaugan.vgg import VGG19_FILE, vgg19_features

    _imported_from(gaugan, root)
    config = GauGANConfig(label_nc=150, contain_dontcare_label=True, use_instance=False, crop_size=size)
    vgg = Path(tempfile.mkdtemp()) / VGG19_FILE
    torch.save({f"features.{k}": v for k, v in vgg19_features().state_dict().items()}, vgg)
    options = TrainOptions(
        vgg_weights=str(vgg),
        ema_decay=None,
        precision=precision,
        channels_last=channels_last,
        compile=compile_,
        total_steps=10**6,
    )
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trainer = GauGANTrainer(config, options, device)
    g = torch.Generator().manual_seed(0)
    batch = {
        "label": torch.randint(0, 151, (1, size, size), generator=g),
        "image": torch.rand(1, 3, size, size, generator=g) * 2 - 1,
    }
    batch["label"][batch["label"] == 150] = 255  # the dontcare class as the loader writes it
    return lambda: trainer.train_step(batch)


def run_child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as workdir:
        if args.child == "reference":
            step = _reference_trainer(args.reference, args.size, workdir)
        else:
            root = args.baseline if args.child == "baseline" else ROOT
            step = _project_trainer(args.size, args.precision, args.channels_last, args.compile, root)
        times, cpu = [], []
        for i in range(args.warmup + args.steps):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"times": times, "cpu": cpu, "peak_rss_MB": round(rss), "threads": torch.get_num_threads()}
    print("RESULT " + json.dumps(result))


# ----------------------------------------------------------------------------- parent
def _spawn(which: str, size: int, args) -> dict:
    reference, baseline = args.reference.resolve(), args.baseline and args.baseline.resolve()  # children start there
    cmd = [sys.executable, "-m", "bench.reference_step", "--child", which, "--size", str(size)]
    cmd += ["--reference", str(reference)] + (["--baseline", str(baseline)] if baseline else [])
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--precision", args.precision] + (["--channels-last"] if args.channels_last else [])
    cmd += (["--compile"] if args.compile else []) + (["--threads", str(args.threads)] if args.threads else [])
    folder = {"reference": reference, "project": ROOT, "baseline": baseline}[which]
    proc = subprocess.run(cmd, capture_output=True, text=True, **in_checkout(folder))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"the {which} child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def compare(args) -> list[dict]:
    kinds = ["reference", "project"] + (["baseline"] if args.baseline else [])
    rows = []
    for size in args.sizes:
        times: dict[str, list[float]] = {k: [] for k in kinds}
        cpu: dict[str, list[float]] = {k: [] for k in kinds}
        rss = dict.fromkeys(kinds, 0)
        for r in range(args.rounds):
            for which in kinds if r % 2 == 0 else kinds[::-1]:
                out = _spawn(which, size, args)
                times[which] += out["times"]
                cpu[which] += out["cpu"]
                rss[which] = max(rss[which], out["peak_rss_MB"])
                print(
                    f"  {size}px round {r + 1} {which:9s}: wall "
                    + " ".join(f"{t:.2f}" for t in out["times"])
                    + " | cpu "
                    + " ".join(f"{t:.2f}" for t in out["cpu"])
                    + f" | load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        med = {k: statistics.median(v) for k, v in times.items()}
        row: dict = {"size": size, "ratio": round(med["reference"] / med["project"], 3), "times": times, "cpu": cpu}
        row |= {f"{k}_s": round(v, 3) for k, v in med.items()} | {f"{k}_rss_MB": v for k, v in rss.items()}
        row |= {f"{k}_cpu_s": round(statistics.median(v), 3) for k, v in cpu.items()}
        rows.append(row)
        base = f", baseline ({args.baseline}) {med['baseline']:.2f}" if args.baseline else ""
        cpu_ratio = row["reference_cpu_s"] / row["project_cpu_s"]
        print(
            f"{size}px: median s/step: reference {med['reference']:.2f}, project {med['project']:.2f} "
            f"({args.precision}{', channels_last' if args.channels_last else ''}){base}; "
            f"ratio reference/project {row['ratio']:.2f}x (process CPU time: {row['reference_cpu_s']:.2f} vs "
            f"{row['project_cpu_s']:.2f} s, {cpu_ratio:.2f}x); peak RSS "
            + ", ".join(f"{k} {v} MB" for k, v in rss.items()),
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of NVlabs/SPADE")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--rounds", type=int, default=2, help="processes per implementation and size")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="this project's")
    parser.add_argument("--channels-last", action="store_true", help="this project's")
    parser.add_argument("--compile", action="store_true", help="this project's")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout of this project, timed too")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=["reference", "project", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args)
    if not (args.reference / "trainers" / "pix2pix_trainer.py").is_file():
        sys.exit(f"--reference {args.reference}: not a checkout of NVlabs/SPADE (no trainers/pix2pix_trainer.py)")
    if not (args.reference / "models" / "networks" / "sync_batchnorm").is_dir():
        sys.exit(
            f"--reference {args.reference}: models/networks/sync_batchnorm is missing; install it as the reference's "
            "README says (copy sync_batchnorm/ of vacancy/Synchronized-BatchNorm-PyTorch there)"
        )
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    rows = compare(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
