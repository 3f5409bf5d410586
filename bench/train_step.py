"""Time one generator step plus one discriminator step, and report images/s and peak memory.

    python bench/train_step.py [--setting ade20k|demo] [--device cpu|cuda] [--precision fp32|bf16|fp16]
                               [--channels-last] [--compile] [--steps 3] [--batch 1]

``ade20k``: the paper's ADE20K setting (crop 256, ngf 64, 150 classes + dontcare, no instances).
``demo``: the demo setting of params.yaml (crop 64, ngf 16). The VGG loss is off (lambda_vgg 0):
its weights cannot be downloaded here; with them it adds one VGG19 pass per step.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from gaugan.config import GauGANConfig, reference_setting
from gaugan.trainer import GauGANTrainer, TrainOptions


def config_for(setting: str) -> GauGANConfig:
    if setting == "ade20k":
        return reference_setting("ade20k")
    return GauGANConfig(label_nc=12, use_instance=True, ngf=16, ndf=16, nef=16, z_dim=64, spade_hidden=32,
                        n_layers_D=3, crop_size=64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--setting", choices=["ade20k", "demo"], default="demo")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()

    cfg = config_for(args.setting)
    device = torch.device(args.device)
    torch.manual_seed(0)
    trainer = GauGANTrainer(cfg, TrainOptions(lambda_vgg=0, precision=args.precision,
                                              channels_last=args.channels_last, compile=args.compile), device)
    h, w = cfg.latent_hw[0] * 2 ** cfg.num_upsamplings, cfg.crop_size
    batch = {"label": torch.randint(0, cfg.label_nc, (args.batch, h, w), device=device),
             "image": torch.rand(args.batch, 3, h, w, device=device) * 2 - 1}
    if cfg.use_instance:
        batch["edge"] = torch.zeros(args.batch, 1, h, w, device=device)
    trainer.train_step(batch)  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({
        "setting": args.setting, "device": str(device), "precision": args.precision, "batch": args.batch,
        "resolution": f"{w}x{h}", "seconds_per_step": round(seconds, 3),
        "images_per_sec": round(args.batch / seconds, 3),
        "peak_memory_mib": round(peak, 1), "peak_memory_kind": "cuda allocated" if device.type == "cuda" else "process max RSS",
        "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
