"""Time one generator step plus one discriminator step of GauGANTrainer, and its peak memory.

Two settings:
- ``ade20k``: the paper's ADE20K model: 150 classes + dontcare, no instance edges, crop 256,
  ngf/ndf 64, n_layers_D 4, SPADE with (sync) batch norm, batch 1;
- ``demo``: the demo pipeline's model (params.yaml): 12 classes + dontcare + edges, crop 64,
  ngf/ndf/nef 16, spade_hidden 32, n_layers_D 3; its knobs are the --demo-* options.

Reports ms per G step and D step, images/s for the pair, and peak memory: CUDA
``max_memory_allocated`` on GPU, the process's max RSS (``getrusage``) on CPU, which includes
torch itself (the RSS before building the networks is printed too). Settings run smallest first,
so the CPU figure of each is its own.

The VGG loss (``--vgg``): ``auto`` uses torchvision's weights from the torch hub cache when the
file is there, else random weights in a temporary file with the real layout (same cost, useless
numbers); ``fake`` always does the latter; ``off`` sets lambda_vgg to 0; or a path to the file.

Usage: ``python -m bench.train_step [--setting all|ade20k|demo] [--device auto|cpu|cuda]
[--precision fp32|bf16|fp16] [--channels-last] [--compile] [--steps N] [--warmup N] [--batch N]
[--vgg auto|fake|off|PATH] [--ema] [--profile N] [--json out.json]``. ``--profile N`` prints the
N operators with the most self CPU time of one more step under ``torch.profiler`` (CPU and CUDA).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from gaugan.config import GauGANConfig
from gaugan.networks import parameter_counts
from gaugan.trainer import GauGANTrainer, TrainOptions


def settings(args) -> dict[str, GauGANConfig]:
    demo = GauGANConfig(
        label_nc=args.demo_label_nc,
        use_instance=True,
        ngf=args.demo_ngf,
        ndf=args.demo_ndf,
        nef=args.demo_ngf,
        z_dim=64,
        spade_hidden=32,
        n_layers_D=3,
        crop_size=args.demo_crop,
    )
    ade20k = GauGANConfig(label_nc=150, contain_dontcare_label=True, use_instance=False, crop_size=256)
    chosen = ["demo", "ade20k"] if args.setting == "all" else [args.setting]
    return {name: {"demo": demo, "ade20k": ade20k}[name] for name in chosen}


def vgg_weights(choice: str, tmp: Path) -> tuple[str | None, str]:
    """(weights path or None for lambda_vgg 0, description)."""
    from gaugan.vgg import VGG19_FILE, default_weights_path, vgg19_features

    if choice == "off":
        return None, "off (lambda_vgg 0)"
    if choice not in ("auto", "fake"):
        return choice, f"real weights from {choice}"
    if choice == "auto" and default_weights_path().is_file():
        return str(default_weights_path()), f"real weights from {default_weights_path()}"
    path = tmp / VGG19_FILE
    torch.save({f"features.{k}": v for k, v in vgg19_features().state_dict().items()}, path)
    return str(path), "random weights with the real layout (timing only)"


def make_batch(config: GauGANConfig, batch: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    h = w = config.crop_size
    out = {
        "label": torch.randint(0, config.label_nc, (batch, h, w), generator=g),
        "image": torch.rand(batch, 3, h, w, generator=g) * 2 - 1,
    }
    if config.use_instance:
        out["edge"] = (torch.rand(batch, 1, h, w, generator=g) > 0.9).float()
    return {k: v.to(device) for k, v in out.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench(name: str, config: GauGANConfig, args, device: torch.device, vgg: str | None) -> dict:
    options = TrainOptions(
        lambda_vgg=10.0 if vgg else 0.0,
        vgg_weights=vgg,
        ema_decay=0.999 if args.ema else None,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        total_steps=10**6,
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = rss_mb()
    torch.manual_seed(0)
    trainer = GauGANTrainer(config, options, device)
    batch = make_batch(config, args.batch, device)
    steps = args.steps or (2 if device.type == "cpu" and name == "ade20k" else 10)
    g_times, d_times = [], []
    for i in range(args.warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        losses, fake = trainer.generator_step(batch)
        sync(device)
        t1 = time.perf_counter()
        trainer.discriminator_step(batch, fake)
        sync(device)
        t2 = time.perf_counter()
        if i >= args.warmup:
            g_times.append(t1 - t0)
            d_times.append(t2 - t1)
    if args.profile:
        profile_step(trainer, batch, args.profile)
    g_ms = 1000 * sum(g_times) / steps
    d_ms = 1000 * sum(d_times) / steps
    result = {
        "setting": name,
        "device": str(device),
        "precision": args.precision,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "batch": args.batch,
        "crop": config.crop_size,
        "ngf": config.ngf,
        "ndf": config.ndf,
        "semantic_nc": config.semantic_nc,
        "steps": steps,
        "warmup": args.warmup,
        "params_G": parameter_counts(config)["G"],
        "params_D": parameter_counts(config)["D"],
        "G_step_ms": round(g_ms, 1),
        "D_step_ms": round(d_ms, 1),
        "step_ms": round(g_ms + d_ms, 1),
        "images_per_s": round(args.batch * 1000 / (g_ms + d_ms), 3),
        "losses_finite": all(torch.isfinite(torch.tensor(v)) for v in losses.values()),
    }
    if device.type == "cuda":
        result["peak_memory_MB"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        result["memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        result["peak_memory_MB"] = round(rss_mb(), 1)
        result["rss_before_MB"] = round(rss_before, 1)
        result["memory_kind"] = "process max RSS (getrusage)"
    del trainer
    return result


def profile_step(trainer: GauGANTrainer, batch: dict, rows: int) -> None:
    """One more G+D step under torch.profiler: the operators with the most self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, record_shapes=True) as prof:
        losses, fake = trainer.generator_step(batch)
        trainer.discriminator_step(batch, fake)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))
    print(
        prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=32, max_shapes_column_width=80
        )
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=["all", "ade20k", "demo"], default="all")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; 2 for ade20k on CPU)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--vgg", default="auto", help="auto | fake | off | path to vgg19-dcbb9e9d.pth")
    parser.add_argument("--demo-label-nc", type=int, default=12)
    parser.add_argument("--demo-crop", type=int, default=64)
    parser.add_argument("--demo-ngf", type=int, default=16)
    parser.add_argument("--demo-ndf", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--ema", action="store_true", help="keep the generator EMA (off: the paper setting)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the top-N operators of one step")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        vgg, vgg_note = vgg_weights(args.vgg, Path(tmp))
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
        print(
            f"device {device} ({where}), precision {args.precision}, channels_last {args.channels_last}, "
            f"compile {args.compile}, VGG loss: {vgg_note}"
        )
        for name, config in settings(args).items():
            r = bench(name, config, args, device, vgg)
            r["vgg"] = vgg_note
            results.append(r)
            extra = f" (RSS before build {r['rss_before_MB']:.0f} MB)" if "rss_before_MB" in r else ""
            print(
                f"{name:7s} batch {r['batch']} crop {r['crop']} ngf {r['ngf']}: G {r['G_step_ms']:.1f} ms + "
                f"D {r['D_step_ms']:.1f} ms = {r['step_ms']:.1f} ms/step, {r['images_per_s']:.3f} images/s, "
                f"peak {r['peak_memory_MB']:.0f} MB [{r['memory_kind']}]{extra}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
