"""Evaluation throughput on this machine: synthesis and FID/KID feature extraction, at 64 and 256 px.

    python bench/evaluate.py [--images 16] [--batch 8] [--sizes 64 256] [--inception-weights PATH] [--json OUT]

- synthesis: the demo-size generator of params.yaml (model section, random weights: speed does not
  depend on the values), built at crop size 64 and 256, run through ``Synthesizer`` (no grad,
  autocast on GPU), label maps from the demo layout;
- features: the ``tiny`` backbone, and the FID Inception architecture (resize to 299, TF1
  bilinear). Without the real weights file (``--inception-weights`` or the torch hub cache) a
  surrogate weights file is written to a temporary folder: the speed is the same, the values are
  not the real ones.

Images per second, measured after one warm-up batch; one line per case and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _timed(fn, batches: list, warmup: int = 1, count=len) -> float:
    """Images per second of ``fn`` over ``batches``, after ``warmup`` untimed batches."""
    for b in batches[:warmup]:
        fn(b)
    n = 0
    start = time.perf_counter()
    for b in batches:
        fn(b)
        n += count(b)
    return n / (time.perf_counter() - start)


def _images(n: int, size: int, batch: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    imgs = (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)
    return [imgs[i : i + batch] for i in range(0, n, batch)]


def bench_features(
    images: int, batch: int, sizes: list[int], inception_weights: str | None, device: torch.device
) -> list[dict]:
    from pipeline.errors import FeatureWeightsError
    from pipeline.evaluation.features import (
        inception_backbone,
        resolve_inception_weights,
        tiny_backbone,
        write_surrogate_inception_weights,
    )

    rows = []
    tiny = tiny_backbone(256)
    tiny.module.to(device)
    try:
        weights = resolve_inception_weights(inception_weights)
        real_weights = True
    except FeatureWeightsError:
        weights = write_surrogate_inception_weights(Path(tempfile.mkdtemp()) / "surrogate-inception.pth")
        real_weights = False
    inception = inception_backbone(weights)
    inception.module.to(device)
    for size in sizes:
        batches = _images(images, size, batch)
        for name, bb in (("tiny", tiny), ("inception", inception)):
            ips = _timed(lambda b, bb=bb: bb.extract(b, device), batches)
            rows.append(
                {
                    "case": f"features-{name}",
                    "size": size,
                    "images_per_sec": round(ips, 2),
                    **({"weights": "real" if real_weights else "surrogate"} if name == "inception" else {}),
                }
            )
            print(f"features {name:9s} {size:4d} px: {ips:8.2f} img/s", flush=True)
    return rows


def _demo_generator(path: Path, model: dict, label_nc: int, crop_size: int) -> Path:
    """params.yaml's model section at ``crop_size``, random weights, saved as the train stage saves it."""
    from gaugan.checkpoint import save_generator
    from gaugan.classes import ClassTable
    from gaugan.config import GauGANConfig
    from gaugan.generator import SPADEGenerator

    keys = ("ngf", "z_dim", "spade_hidden", "use_vae", "use_instance", "num_upsampling_layers", "norm_G")
    config = GauGANConfig(label_nc=label_nc, crop_size=crop_size, **{k: model[k] for k in keys})
    torch.manual_seed(0)
    classes = ClassTable("bench", tuple(str(i) for i in range(label_nc)), tuple((i, i, i) for i in range(label_nc)))
    save_generator(path, SPADEGenerator(config), None, config, classes, {})
    return path


def bench_synthesis(images: int, batch: int, sizes: list[int], device: torch.device, label_nc: int = 12) -> list[dict]:
    from gaugan.synthesizer import Synthesizer
    from pipeline.params import load_params

    model = load_params(ROOT / "params.yaml").model.model_dump()
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for size in sizes:
        synth = Synthesizer.from_checkpoint(
            _demo_generator(tmp / f"g{size}.pt", model, label_nc, size), device=str(device)
        )
        g = torch.Generator().manual_seed(0)
        labels = torch.randint(0, label_nc, (images, size // 8, size // 8), generator=g)
        labels = labels.repeat_interleave(8, 1).repeat_interleave(8, 2)  # blocky layouts
        instances = labels + 1
        batches = [(labels[i : i + batch], instances[i : i + batch]) for i in range(0, images, batch)]
        use_inst = synth.config.use_instance
        ips = _timed(
            lambda b, synth=synth, use_inst=use_inst: synth(
                b[0], instances=b[1] if use_inst else None, seed=0, batch_size=batch
            ),
            batches,
            count=lambda b: len(b[0]),
        )
        n_params = sum(p.numel() for p in synth.netG.parameters())
        rows.append(
            {
                "case": "synthesis",
                "size": size,
                "images_per_sec": round(ips, 2),
                "ngf": model["ngf"],
                "params_G": n_params,
            }
        )
        print(
            f"synthesis (ngf={model['ngf']}, {n_params / 1e6:.2f} M params) {size:4d} px: {ips:8.2f} img/s", flush=True
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--inception-weights", default=None)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--skip", nargs="*", default=[], choices=["features", "synthesis"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    rows = []
    if "synthesis" not in args.skip:
        rows += bench_synthesis(args.images, args.batch, args.sizes, device)
    if "features" not in args.skip:
        rows += bench_features(args.images, args.batch, args.sizes, args.inception_weights, device)
    summary = {"device": str(device), "threads": torch.get_num_threads(), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
