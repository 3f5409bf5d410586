"""Throughput of the whole evaluate stage on this machine, and where its time goes.

    python -m bench.evaluate [--sizes 64 256] [--images 48 16] [--inception-weights PATH] [--device cpu] [--json OUT]

For each size: the demo dataset generated at that size (``data.demo`` of params.yaml, its validation
split cut to ``--images``), the demo generator of params.yaml's ``model`` section and a
``unet-small`` segmenter of ``segmenter.width`` (random weights: speed does not depend on the
values), and ``evaluate.feature_extractor: inception`` (2048-d). Without the real Inception file
(``--inception-weights``, weights/ or the torch hub cache) a surrogate weights file is written to a
temporary folder: the speed is the same, the values are not. The stage runs twice: the first pass
extracts the real images' features, the second reads them from the cache (as a re-evaluation does).

Printed: images per second of the stage (wall clock, loading the inputs included) and the seconds
of each part (``metrics.json``'s ``timings``), then a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.workspace import ROOT, bench_params


def _inception_weights(explicit: str | None, scratch: Path) -> tuple[Path, bool]:
    from pipeline.errors import FeatureWeightsError
    from pipeline.evaluation.features import (
        INCEPTION_SHA256,
        resolve_inception_weights,
        write_surrogate_inception_weights,
    )
    from pipeline.io import sha256_file

    try:
        path = resolve_inception_weights(explicit, weights_dir=ROOT / "weights")
        return path, sha256_file(path) == INCEPTION_SHA256
    except FeatureWeightsError:
        return write_surrogate_inception_weights(scratch / "surrogate-inception.pth"), False


def _project(root: Path, size: int, images: int, params) -> None:
    """The demo data at ``size`` px, a random demo generator and a random unet-small segmenter, under ``root``."""
    from gaugan.checkpoint import save_generator
    from gaugan.classes import ClassTable
    from gaugan.config import GauGANConfig
    from gaugan.data import dataset_id
    from gaugan.generator import SPADEGenerator
    from pipeline.datasets import prepare
    from pipeline.datasets.demo import write_demo_source
    from pipeline.evaluation.segmentation_nets import build_network
    from pipeline.evaluation.segmenter import save_segmenter

    demo = params.data.demo.model_copy(update={"width": size, "height": size, "num_train": 2, "num_val": images})
    write_demo_source(root / "raw", demo)
    prepare(params.data.model_copy(update={"format": "folder"}), root / "raw", root / "data", progress=False)
    classes = ClassTable.load(root / "data")
    m = params.model
    keys = ("ngf", "z_dim", "spade_hidden", "use_vae", "use_instance", "num_upsampling_layers", "norm_G")
    config = GauGANConfig(label_nc=classes.label_nc, crop_size=size, **{k: getattr(m, k) for k in keys})
    torch.manual_seed(0)
    save_generator(root / "generator.pt", SPADEGenerator(config), None, config, classes, {"steps": 0})
    net = build_network("unet-small", classes.label_nc, params.segmenter.width)
    meta = {"classes": classes.to_dict(), "dataset_id": dataset_id(root / "data")}
    save_segmenter(root / "segmenter.pt", net, "unet-small", classes.label_nc, params.segmenter.width, meta)


def bench_size(size: int, images: int, weights: Path, device: str, scratch: Path) -> dict:
    from pipeline.stages.evaluate import run as run_evaluate

    updates = {
        "data.out": "data",
        "train.model_out": "generator.pt",
        "train.out_dir": "train",
        "segmenter.out": "segmenter.pt",
        "train.crop_size": size,
        "train.load_size": size,
        "evaluate.feature_extractor": "inception",
        "evaluate.inception_weights": str(weights),
        "evaluate.stats_cache": "cache",
        "evaluate.device": device,
        "evaluate.out_dir": "out",
    }
    params = bench_params(updates, "bench/evaluate.py")
    root = scratch / f"size{size}"
    _project(root, size, images, params)
    rows = {}
    for attempt in ("first", "cached"):
        start = time.perf_counter()
        metrics = run_evaluate(params, root)
        wall = time.perf_counter() - start
        rows[attempt] = {
            "seconds": round(wall, 2),
            "images_per_sec": round(images / wall, 3),
            "timings": metrics["timings"],
        }
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(metrics["timings"].items(), key=lambda kv: -kv[1]))
        print(f"{size:4d} px, {images} images, {attempt:6s}: {wall:7.1f} s, {images / wall:6.2f} img/s | {parts}")
    return {"size": size, "images": images, **rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--images", type=int, nargs="+", default=[48, 16], help="validation images, one per size")
    ap.add_argument("--inception-weights", default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if len(args.images) != len(args.sizes):
        ap.error("give one --images count per --sizes entry")
    threads = f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    print(f"device {args.device}, {threads}")
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        weights, real = _inception_weights(args.inception_weights, Path(tmp))
        print(f"Inception weights: {weights} ({'the real file' if real else 'a surrogate: speed only'})")
        rows = [bench_size(s, n, weights, args.device, Path(tmp)) for s, n in zip(args.sizes, args.images, strict=True)]
    summary = {"device": args.device, "threads": torch.get_num_threads(), "real_inception": real, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
