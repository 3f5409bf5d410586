"""Latency of the painting app: request to PNG, and the folded inference path against a plain forward.

Two generators with random weights (the cost of a trained one):
- ``demo``: the demo pipeline's model (params.yaml): 12 classes + dontcare + instance edges, 64x64,
  ngf 16, spade_hidden 32;
- ``paper``: the paper's size: ADE20K's 150 classes + dontcare, 256x256, ngf 64, spade_hidden 128.

For each: the app's ``POST /api/synthesize`` in process (FastAPI's test client: JSON, base64 PNG
decode, palette checks, generation, PNG encode; no network), median and p95 over ``--reps``
requests; then the generator alone, the variants taking turns (round robin, so that other work on
the machine slows them alike): the plain eager forward (spectral-norm hooks, ``no_grad``)
against the folded one (:func:`gaugan.synthesizer.fold_spectral_norm`, ``inference_mode``), with
the largest difference of their outputs, and the folded one in channels_last (what the app
serves: ``from_checkpoint(fold=True)``) and under bf16 autocast (faster on some CPUs, but it
changes the pixels: not used on CPU). The machine's
load average is printed with the figures: other work on the machine slows every number.

Usage: ``python -m bench.app [--setting all|demo|paper] [--reps 30] [--paper-reps 5] [--threads N]
[--json out.json]``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.workspace import PARAMS_FILE
from gaugan.checkpoint import save_generator
from gaugan.classes import ClassTable
from gaugan.config import GauGANConfig
from gaugan.encoding import encode_labels
from gaugan.generator import SPADEGenerator
from gaugan.synthesizer import Synthesizer

SETTINGS = {
    "demo": dict(label_nc=12, use_instance=True, ngf=16, z_dim=64, spade_hidden=32, crop_size=64),
    "paper": dict(label_nc=150, use_instance=False, crop_size=256),  # ngf 64, spade_hidden 128: the defaults
}


def write_model(name: str, folder: Path) -> Path:
    config = GauGANConfig(**SETTINGS[name])
    classes = ClassTable(
        dataset=name,
        names=tuple(f"class{i}" for i in range(config.label_nc)),
        colors=tuple((i, 255 - i, (7 * i) % 256) for i in range(config.label_nc)),
    )
    torch.manual_seed(0)
    path = folder / f"{name}.pt"
    save_generator(path, SPADEGenerator(config).eval(), None, config, classes, {"steps": 0})
    return path


def label_map(size: int, label_nc: int) -> np.ndarray:
    """Blocks of classes, as a painted map has."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, label_nc, (8, 8)).astype(np.uint8)
    return np.kron(blocks, np.ones((size // 8, size // 8), np.uint8))


def percentiles(times: list[float]) -> dict:
    ms = sorted(t * 1000 for t in times)
    return {
        "min_ms": round(ms[0], 1),
        "median_ms": round(statistics.median(ms), 1),
        "p95_ms": round(ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))], 1),
        "n": len(ms),
    }


def request_latency(model: Path, labels: np.ndarray, reps: int) -> dict:
    from fastapi.testclient import TestClient

    from pipeline.params import load_params
    from pipeline.serving.app.catalog import Catalog
    from pipeline.serving.app.server import create_app

    settings = load_params(PARAMS_FILE).app
    catalog = Catalog("sqlite:///:memory:", str(model), "cpu", settings.cache_models)
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(labels).save(buf, format="PNG")
    body = {"label": base64.b64encode(buf.getvalue()).decode(), "seed": 0}
    times = []
    with TestClient(create_app(catalog, settings)) as client:
        for i in range(reps + 2):  # two warm-up requests (the first loads the model)
            start = time.perf_counter()
            out = client.post("/api/synthesize", json=body).json()
            Image.open(io.BytesIO(base64.b64decode(out["images"][0]))).load()
            if i >= 2:
                times.append(time.perf_counter() - start)
    return percentiles(times)


def forward_times(model: Path, labels: np.ndarray, reps: int) -> dict:
    plain = Synthesizer.from_checkpoint(model, device="cpu")
    folded = Synthesizer.from_checkpoint(model, device="cpu").fold(channels_last=False)
    cfg = plain.config
    lab = torch.from_numpy(labels.astype(np.int64))[None]
    edges = torch.zeros_like(lab, dtype=torch.float32)[:, None] if cfg.use_instance else None
    sem = encode_labels(lab, cfg.label_nc, cfg.contain_dontcare_label, edges)

    def eager():
        with torch.no_grad():
            return plain.netG(sem)

    def fast():
        with torch.inference_mode():
            return folded.netG(sem)

    def channels_last():  # what the app serves: from_checkpoint(fold=True)
        with torch.inference_mode():
            return served.netG(sem_cl)

    def bf16():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return served.netG(sem_cl).float()

    served = Synthesizer.from_checkpoint(model, device="cpu", fold=True)
    sem_cl = sem.contiguous(memory_format=torch.channels_last)
    variants = {"eager": eager, "folded": fast, "bf16": bf16, "channels_last": channels_last}
    outputs = {name: fn() for name, fn in variants.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):  # round robin: a busy machine slows every variant alike
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    t_eager, t_fold, t_bf16, t_cl = (times[k] for k in variants)
    y_eager = outputs["eager"]
    eager_s, fold_s, served_s = percentiles(t_eager), percentiles(t_fold), percentiles(t_cl)
    return {
        "eager": eager_s,
        "folded": fold_s,
        "served (folded + channels_last)": served_s,
        "speedup_folded": round(eager_s["median_ms"] / fold_s["median_ms"], 3),
        "speedup_served": round(eager_s["median_ms"] / served_s["median_ms"], 3),
        "max_abs_diff_folded": float((y_eager - outputs["folded"]).abs().max()),
        "max_abs_diff_served": float((y_eager - outputs["channels_last"]).abs().max()),
        "max_abs_diff_bf16": float((y_eager - outputs["bf16"]).abs().max()),
        "served_bf16_autocast": percentiles(t_bf16),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=["all", "demo", "paper"], default="all")
    parser.add_argument("--reps", type=int, default=30, help="timed requests / forwards of the demo model")
    parser.add_argument("--paper-reps", type=int, default=5, help="timed requests / forwards of the paper model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["demo", "paper"] if args.setting == "all" else [args.setting]
    result = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            model = write_model(name, Path(tmp))
            size = SETTINGS[name]["crop_size"]
            labels = label_map(size, SETTINGS[name]["label_nc"])
            reps = args.reps if name == "demo" else args.paper_reps
            result[name] = {"request": request_latency(model, labels, reps), **forward_times(model, labels, reps)}
            print(name, json.dumps(result[name]), flush=True)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
