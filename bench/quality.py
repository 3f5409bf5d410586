"""Synthesis quality at equal compute: generator families, trainer settings and the NVlabs/SPADE trainer.

Both train on the demo (params.yaml's data, model and train settings: 500 steps, 64 px, batch 8,
the demo architecture) from the same loader batches (this project's step-indexed loader: same
samples, crops, flips and instance edges for both), over several seeds; each generator is then
scored by this project's evaluate stage (the tiny FID backbone, the demo's segmenter trained once,
the same validation images), at each of ``--sizes`` validation images. Printed: FID and mIoU per
seed, mean and seed-to-seed spread (sample standard deviation), and a verdict per figure against
the baseline (``--baseline``; default: the reference trainer when it runs, else the first variant)
at equal steps and at equal wall time: Welch's t-test over the seeds, "better" or "worse" only where
p < 0.05, else "no difference shown" with the p-value (a GAN figure from one seed decides nothing).

Variants (``--variant NAME[:KEY=VALUE,...]``; a plain KEY is params.yaml's ``train.KEY``, a dotted
one any setting, e.g. ``pix2pixhd:model.netG=pix2pixhd,model.norm_G=spectralinstance``) are this
project's trainer with those settings; the name ``reference`` is the reference trainer. Variants that differ
only in EMA settings (``ema``, ``ema_decay``, ``ema_warmup``, ``ema_start_step``) share one training
run (the average does not feed back into training): the first one's EMA is the trainer's own, the
others are kept beside it with the same functions (``gaugan.trainer.ema_decay_at``/``update_ema``).

Equal wall time: from the per-step process CPU time of the first variant other than the baseline
and of the baseline (medians over the equal-step runs; CPU time, not wall time, because the machine is
shared), the slower trainer is run again with its step count (and ``decay_start_step``) scaled to
the faster one's time for ``--steps``.

The reference runs (when a variant is named ``reference``) from ``--reference DIR`` (a checkout of
NVlabs/SPADE outside this repository, never copied here; its ``models/networks/sync_batchnorm``
installed as its README says), imported and patched at run time as ``bench.reference_step`` does,
plus: the SPADE hidden width (which the reference hard-codes to 128) is set to
``model.spade_hidden`` by rebuilding its three label convolutions right after construction (its own
init then applies), its ``get_edges`` takes our loader's edge maps as they are (same instance edges
for both), its learning rates follow params.yaml's schedule per step (its own schedule moves once
per epoch), and its options not on its command line (label_nc, dontcare, instance) are set from the
prepared dataset. Its generator's weights load strictly into this project's generator (the same
state-dict layout) for scoring.

Usage: ``python -m bench.quality [--reference /work/spade-ref] --work /tmp/quality [--seeds 0 1 2 3 4 5]
[--steps 500] [--num-val 192] [--sizes 48 96 192] [--variant reference --variant defaults
--variant no-ema:ema=false ...] [--baseline NAME] [--jobs 1] [--no-equal-time] [--json out.json]``. Runs are cached
in ``--work`` by name (delete the folder to start over). Never part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import yaml

from bench.reference_step import in_checkout, load_reference, reference_options
from bench.workspace import ROOT, bench_params, demo_data, demo_segmenter

EMA_KEYS = {"ema", "ema_decay", "ema_warmup", "ema_start_step"}
DEFAULT_VARIANTS = [
    "reference",
    "defaults",
    "no-ema:ema=false",
    "ema-plain:ema_warmup=false",
    "regenerate:d_fake=regenerate",
    "pix2pixhd:model.netG=pix2pixhd,model.norm_G=spectralinstance",
]


@dataclass
class Variant:
    name: str
    train: dict = field(default_factory=dict)  # params.yaml train.* overrides

    @property
    def reference(self) -> bool:
        return self.name.startswith("reference")

    def group_key(self) -> str:
        """Variants with the same key share a training run (they differ in EMA settings only)."""
        rest = {k: v for k, v in self.train.items() if k not in EMA_KEYS}
        return json.dumps([self.reference, rest], sort_keys=True)


def parse_variant(text: str) -> Variant:
    name, _, spec = text.partition(":")
    train = {}
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text}: {item!r} is not KEY=VALUE")
        train[key.strip()] = yaml.safe_load(value)
    return Variant(name, train)


# ----------------------------------------------------------------------------- data and settings
def base_params(num_val: int):
    """params.yaml with the demo's data, the segmenter and the scores in the work folder's layout."""
    return bench_params(
        {
            "data.format": "folder",
            "data.source": "raw",
            "data.out": "data",
            "data.demo.num_val": num_val,
            "segmenter.out": "segmenter.pt",
            "segmenter.metrics": "segmenter.json",
            "evaluate.stats_cache": "cache",
            "train.num_workers": 0,
        },
        "bench/quality.py",
    )


def prepare(work: Path, num_val: int, segmenter: bool = True) -> None:
    """The demo source, the prepared dataset and the demo's segmenter (seed 0), once per ``work``."""
    params = base_params(num_val)
    demo_data(params, work)
    if segmenter:
        demo_segmenter(params, work)


def run_params(work: Path, num_val: int, seed: int, steps: int, train: dict):
    """The settings of one training run: ``train`` overrides, ``steps`` steps, the decay scaled with them."""
    from pipeline.params import override

    params = base_params(num_val)
    t = params.train
    decay = None if t.decay_start_step is None else round(t.decay_start_step * steps / t.max_steps)
    updates = {"seed": seed, "train.max_steps": steps, "train.decay_start_step": decay}
    settings = {(k if "." in k else f"train.{k}"): v for k, v in train.items()}
    return override(params, updates | settings, "bench/quality.py --variant")


def batches(params, work: Path, use_instance: bool):
    import torch

    from pipeline.distributed import DistContext
    from pipeline.training.session import build_loader

    ctx = DistContext(0, 1, 0, torch.device("cpu"), None)
    holder = SimpleNamespace(config=SimpleNamespace(use_instance=use_instance))
    return ctx, build_loader(params, work / params.data.out, holder, ctx, 0)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- training children
class StepClock:
    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def timed(self, iterable):
        """Yields the items; each iteration (loading the batch and the step) is timed."""
        it = iter(iterable)
        while True:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                item = next(it)
            except StopIteration:
                return
            yield item
            self.wall.append(time.perf_counter() - t0)
            self.cpu.append(time.process_time() - c0)

    def record(self) -> dict:
        return {
            "wall_s": sum(self.wall),
            "cpu_s": sum(self.cpu),
            "step_wall_s": statistics.median(self.wall),
            "step_cpu_s": statistics.median(self.cpu),
        }


def train_project(work: Path, spec: dict, out: Path) -> dict:
    """One run of this project's trainer; one generator file per variant of the group."""
    import torch

    from gaugan.checkpoint import save_generator, unwrap
    from gaugan.classes import ClassTable
    from gaugan.trainer import GeneratorModel, ema_decay_at, update_ema
    from pipeline.training.session import build_trainer

    variants = [Variant(**v) for v in spec["variants"]]
    params = run_params(work, spec["num_val"], spec["seed"], spec["steps"], variants[0].train)
    classes = ClassTable.load(work / params.data.out)
    ctx, loader = batches(params, work, params.model.use_instance)
    trainer = build_trainer(params, classes, ctx)
    extra = []
    for v in variants[1:]:
        t = run_params(work, spec["num_val"], spec["seed"], spec["steps"], v.train).train
        copy = GeneratorModel(trainer.config)
        copy.load_state_dict(unwrap(trainer.generator).state_dict())
        extra.append((v, t, copy.requires_grad_(False)))
    clock, ok = StepClock(), torch.tensor(True)
    for step, batch in enumerate(clock.timed(loader)):
        trainer.train_step(batch, read=(step + 1) % 50 == 0 or step + 1 == spec["steps"])
        for _, t, copy in extra:
            # the update after ``step`` applied steps (fp32 on CPU: a step that is not applied raises)
            decay = ema_decay_at(torch.tensor(step), t.ema_decay, t.ema_warmup, t.ema_start_step)
            update_ema(copy, unwrap(trainer.generator), decay if t.ema else torch.zeros(()), ok)
    files = {}
    netG, _ = trainer.inference_generator()  # what the train stage exports (EMA weights when on)
    outputs = [(variants[0], netG)] + [(v, copy.eval().netG) for v, _, copy in extra]
    for v, g in outputs:
        files[v.name] = str(out / f"{v.name}.pt")
        save_generator(files[v.name], g, None, trainer.config, classes, {"bench": v.name, "seed": spec["seed"]})
    return {"files": files, **clock.record()}


def _reference_spade_width(hidden: int) -> None:
    """The reference's SPADE with ``hidden`` channels in its label convolutions (it hard-codes 128)."""
    import torch.nn as nn
    from models.networks.normalization import SPADE

    if getattr(SPADE, "_bench_hidden", None) == hidden:
        return
    plain_init = SPADE.__init__

    def init(self, config_text, norm_nc, label_nc):
        plain_init(self, config_text, norm_nc, label_nc)
        conv = self.mlp_shared[0]
        ks, pw = conv.kernel_size, conv.padding
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size=ks, padding=pw), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size=ks, padding=pw)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size=ks, padding=pw)

    SPADE.__init__ = init
    SPADE._bench_hidden = hidden


def reference_trainer(reference: Path, params, classes, workdir: str):
    """The reference's Pix2PixTrainer at params.yaml's model and train settings."""
    _, Pix2PixTrainer = load_reference(reference)
    m, t = params.model, params.train
    args = [
        *("--dataset_mode", "coco", "--dataroot", workdir, "--batchSize", str(t.batch_size)),
        *("--crop_size", str(t.crop_size), "--load_size", str(t.load_size), "--aspect_ratio", str(t.aspect_ratio)),
        *("--ngf", str(m.ngf), "--ndf", str(m.ndf), "--z_dim", str(m.z_dim), "--num_D", str(m.num_D)),
        *("--n_layers_D", str(m.n_layers_D), "--norm_G", m.norm_G, "--norm_D", m.norm_D, "--norm_E", m.norm_E),
        *("--num_upsampling_layers", m.num_upsampling_layers, "--label_nc", str(classes.label_nc)),
        *("--init_type", t.init_type, "--init_variance", str(t.init_variance), "--lr", str(t.lr)),
        *("--beta1", str(t.beta1), "--beta2", str(t.beta2), "--gan_mode", t.gan_mode),
        *("--lambda_feat", str(t.lambda_feat), "--D_steps_per_G", str(t.d_steps_per_g)),
        *(["--no_vgg_loss"] if t.lambda_vgg == 0 else ["--lambda_vgg", str(t.lambda_vgg)]),
        *([] if t.ttur else ["--no_TTUR"]),
        *(["--use_vae", "--lambda_kld", str(t.lambda_kld)] if m.use_vae else []),
    ]
    opt = reference_options(reference, workdir, args)
    opt.contain_dontcare_label = classes.contain_dontcare_label
    opt.no_instance = not m.use_instance
    opt.semantic_nc = classes.label_nc + int(opt.contain_dontcare_label) + int(m.use_instance)
    _reference_spade_width(m.spade_hidden)
    trainer = Pix2PixTrainer(opt)
    trainer.pix2pix_model.get_edges = lambda edges: edges  # our loader's instance edges, as they are
    return trainer


def train_reference(work: Path, spec: dict, out: Path, reference: Path) -> dict:
    import torch

    from gaugan.checkpoint import save_generator
    from gaugan.classes import ClassTable
    from gaugan.generator import SPADEGenerator
    from gaugan.trainer import GauGANTrainer, TrainOptions
    from pipeline.training.settings import model_config

    (v,) = [Variant(**x) for x in spec["variants"]]
    params = run_params(work, spec["num_val"], spec["seed"], spec["steps"], v.train)
    t, classes = params.train, ClassTable.load(work / params.data.out)
    ctx, loader = batches(params, work, params.model.use_instance)
    schedule = SimpleNamespace(options=TrainOptions(total_steps=t.max_steps, decay_start_step=t.decay_start_step))
    torch.manual_seed(params.seed)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = reference_trainer(reference, params, classes, tmp)
        clock = StepClock()
        for step, batch in enumerate(clock.timed(loader)):
            lr = t.lr * GauGANTrainer.lr_factor(schedule, step)  # type: ignore[arg-type]
            lrs = (lr / 2, lr * 2) if t.ttur else (lr, lr)
            for optimizer, value in zip((trainer.optimizer_G, trainer.optimizer_D), lrs, strict=True):
                for group in optimizer.param_groups:
                    group["lr"] = value
            label = batch["label"].long()
            label[label == 255] = classes.label_nc  # the dontcare channel, as its loaders write it
            data = {
                "label": label[:, None],
                "instance": batch["edge"].float() / 255.0 if "edge" in batch else torch.zeros(1),
                "image": batch["image"].float() / 127.5 - 1.0,
                "path": batch["id"],
            }
            if step % t.d_steps_per_g == 0:
                trainer.run_generator_one_step(dict(data))
            trainer.run_discriminator_one_step(dict(data))
        config = model_config(params, classes)
        netG = SPADEGenerator(config)
        netG.load_state_dict(trainer.pix2pix_model.netG.state_dict(), strict=True)
    path = out / f"{v.name}.pt"
    save_generator(path, netG.eval(), None, config, classes, {"bench": v.name, "seed": spec["seed"]})
    return {"files": {v.name: str(path)}, **clock.record()}


def run_child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    spec = json.loads(args.child_spec)
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    if spec["reference"]:
        result = train_reference(args.work, spec, out, args.reference.resolve())
    else:
        result = train_project(args.work, spec, out)
    (out / "run.json").write_text(json.dumps(result, indent=2))


# ----------------------------------------------------------------------------- parent
def train_group(args, group: list[Variant], seed: int, steps: int, tag: str) -> dict:
    """The group's run (cached in work/runs/<tag>/): {files, wall_s, cpu_s, step_wall_s, step_cpu_s}."""
    out = args.work / "runs" / tag
    if (out / "run.json").is_file():
        result = json.loads((out / "run.json").read_text())
        if all(v.name in result["files"] for v in group):
            return result
    spec = {
        "variants": [v.__dict__ for v in group],
        "reference": group[0].reference,
        "seed": seed,
        "steps": steps,
        "num_val": args.num_val,
        "out": str(out),
    }
    cmd = [sys.executable, "-m", "bench.quality", "--work", str(args.work)]
    cmd += ["--reference", str(args.reference)] if args.reference else []
    cmd += ["--threads", str(args.threads), "--child-spec", json.dumps(spec)]
    print(f"training {tag} ({', '.join(v.name for v in group)}), seed {seed}, {steps} steps\n", end="", flush=True)
    log = args.work / "runs" / f"{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        # a reference run starts in the reference's folder: its models, options... import from there
        folder = args.reference if group[0].reference else ROOT
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **in_checkout(folder))
    if proc.returncode != 0:
        raise SystemExit(f"{tag} failed (exit {proc.returncode}); see {log}")
    return json.loads((out / "run.json").read_text())


def score(args, generator: str, n: int) -> dict:
    """This project's evaluate stage on ``generator`` with the first ``n`` validation images (seed 0)."""
    from pipeline.params import override
    from pipeline.stages import evaluate

    out_dir = Path(generator).with_suffix("") / f"eval{n}"
    if (out_dir / "metrics.json").is_file():
        return json.loads((out_dir / "metrics.json").read_text())
    updates = {
        "seed": 0,
        "train.model_out": str(Path(generator).relative_to(args.work)),
        "train.out_dir": str(out_dir.relative_to(args.work)),
        "evaluate.out_dir": str(out_dir.relative_to(args.work)),
        "evaluate.max_images": n,
    }
    return evaluate.run(override(base_params(args.num_val), updates, "bench/quality.py"), args.work)


def train_all(args, variants: list[Variant]) -> dict:
    """{(seed, variant name, "steps"|"time"): run record with the variant's generator file}."""
    groups: dict[str, list[Variant]] = {}
    for v in variants:
        groups.setdefault(v.group_key(), []).append(v)
    jobs = [(g, seed, args.steps, f"s{seed}-{g[0].name}-{args.steps}") for seed in args.seeds for g in groups.values()]
    runs = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda j: (j, train_group(args, *j)), jobs))
    for (g, seed, _, _), result in done:
        for v in g:
            runs[(seed, v.name, "steps")] = result | {"file": result["files"][v.name]}
    if args.equal_time:
        runs |= equal_time_runs(args, variants, runs)
    return runs


def equal_time_runs(args, variants: list[Variant], runs: dict) -> dict:
    """The slower of (reference, first project variant) again, with the faster one's time for --steps."""
    ref = next(v for v in variants if v.name == args.baseline)
    ours = next(v for v in variants if v.name != args.baseline)
    per_step = {
        v.name: statistics.median(runs[(s, v.name, "steps")]["step_cpu_s"] for s in args.seeds) for v in (ref, ours)
    }
    slow, fast = (ref, ours) if per_step[ref.name] > per_step[ours.name] else (ours, ref)
    steps = round(args.steps * per_step[fast.name] / per_step[slow.name])
    print(f"per-step CPU s: {per_step}; equal time: {slow.name} runs {steps} steps", flush=True)
    slow_only = Variant(slow.name, slow.train)
    jobs = [(seed, f"s{seed}-{slow.name}-{steps}") for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda j: (j[0], train_group(args, [slow_only], j[0], steps, j[1])), jobs))
    out = {}
    for seed, result in done:
        out[(seed, slow.name, "time")] = result | {"file": result["files"][slow.name], "steps": steps}
        out[(seed, fast.name, "time")] = runs[(seed, fast.name, "steps")] | {"steps": args.steps}
    return out


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def verdict(ours: list[float], base: list[float], higher_is_better: bool, alpha: float = 0.05) -> str:
    """Welch's t-test of the seeds' figures: 'better' / 'worse' only where p < ``alpha``, else 'no
    difference shown'; with the difference of the means and the p-value."""
    from scipy.stats import ttest_ind

    d = statistics.mean(ours) - statistics.mean(base)
    if len(ours) < 2 or len(base) < 2:
        return f"{d:+.3f}, too few seeds for a test"
    p = float(ttest_ind(ours, base, equal_var=False).pvalue)
    if p != p:  # no spread on either side (identical figures)
        return f"{d:+.3f}, no spread: no test"
    good = d > 0 if higher_is_better else d < 0
    word = ("better" if good else "worse") if p < alpha else "no difference shown"
    return f"{word} ({d:+.3f}, Welch p = {p:.3f})"


def table(scores: dict, seeds: list[int], names: list[str], ref: str, mode: str, n: int) -> list[str]:
    lines = [f"\n### {'equal steps' if mode == 'steps' else 'equal wall time (process CPU time)'}, {n} val images"]
    head = " | ".join(f"seed {s} FID / mIoU" for s in seeds)
    lines += [f"| variant | steps | {head} | FID mean ± sd | mIoU mean ± sd | FID verdict | mIoU verdict |"]
    lines += ["|---" * (len(seeds) + 6) + "|"]
    for name in names:
        rows = [scores.get((s, name, mode, n)) for s in seeds]
        if any(r is None for r in rows):
            continue
        fid, miou = [r["fid"] for r in rows], [r["miou"] for r in rows]
        ref_rows = [scores[(s, ref, mode, n)] for s in seeds]
        ref_fid, ref_miou = [r["fid"] for r in ref_rows], [r["miou"] for r in ref_rows]
        cells = " | ".join(f"{f:.3f} / {m:.3f}" for f, m in zip(fid, miou, strict=True))
        verdicts = ["-", "-"] if name == ref else [verdict(fid, ref_fid, False), verdict(miou, ref_miou, True)]
        lines.append(
            f"| {name} | {rows[0]['steps']} | {cells} | {statistics.mean(fid):.3f} ± {spread(fid):.3f} | "
            f"{statistics.mean(miou):.3f} ± {spread(miou):.3f} | {verdicts[0]} | {verdicts[1]} |"
        )
    return lines


def size_spread(scores: dict, seeds: list[int], names: list[str], sizes: list[int]) -> list[str]:
    """Seed-to-seed spread at each number of validation images, pooled over the variants (equal steps)."""
    lines = ["", "### seed-to-seed spread by validation size (equal steps, pooled over the variants)"]
    lines += ["| val images | FID sd (pooled) | mIoU sd (pooled) | FID sd per variant |", "|---|---|---|---|"]
    for n in sizes:
        fid_sd, miou_sd = {}, {}
        for name in names:
            rows = [scores.get((s, name, "steps", n)) for s in seeds]
            if all(rows) and len(rows) > 1:
                fid_sd[name] = spread([r["fid"] for r in rows])
                miou_sd[name] = spread([r["miou"] for r in rows])
        if fid_sd:
            pooled = [statistics.mean(v**2 for v in sd.values()) ** 0.5 for sd in (fid_sd, miou_sd)]
            per = ", ".join(f"{k} {v:.3f}" for k, v in fid_sd.items())
            lines.append(f"| {n} | {pooled[0]:.3f} | {pooled[1]:.3f} | {per} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=None, help="a checkout of NVlabs/SPADE (variant 'reference')")
    parser.add_argument("--work", type=Path, required=True, help="data, runs and scores (outside the repository)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--baseline", default=None, help="the variant the others are tested against")
    parser.add_argument("--steps", type=int, default=None, help="default: params.yaml's train.max_steps")
    parser.add_argument("--num-val", type=int, default=192, help="validation images prepared")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="validation images scored (default: all)")
    parser.add_argument("--variant", action="append", default=None, help="NAME[:KEY=VALUE,...] (train.* keys)")
    parser.add_argument("--no-equal-time", dest="equal_time", action="store_false")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--train-only", action="store_true", help="train (and cache) the equal-step runs, no scores")
    parser.add_argument("--child-spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    args.reference = args.reference.resolve() if args.reference else None
    from pipeline.logs import configure_logging

    configure_logging(0)  # the stages' progress lines
    if args.child_spec:
        return run_child(args)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.work / 'mlflow.db'}")
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    if any(v.reference for v in variants) and not (
        args.reference and (args.reference / "trainers" / "pix2pix_trainer.py").is_file()
    ):
        raise SystemExit(f"--reference {args.reference}: give a checkout of NVlabs/SPADE for the 'reference' variant")
    names = [v.name for v in variants]
    ref = args.baseline or next((v.name for v in variants if v.reference), names[0])
    if ref not in names:
        raise SystemExit(f"--baseline {ref}: not one of the variants {names}")
    if not args.train_only and len(variants) < 2:
        raise SystemExit("--variant: give at least two variants (a baseline and one to test against it)")
    args.baseline = ref
    args.steps = args.steps or bench_params({}, "bench/quality.py").train.max_steps
    sizes = args.sizes or [args.num_val]
    args.work.mkdir(parents=True, exist_ok=True)
    prepare(args.work, args.num_val, segmenter=not args.train_only)
    if args.train_only:
        args.equal_time = False
        return print(f"trained: {sorted(train_all(args, variants))}")
    runs = train_all(args, variants)
    scores = {}
    for (seed, name, mode), run in sorted(runs.items()):
        for n in sizes:
            m = score(args, run["file"], n)
            scores[(seed, name, mode, n)] = {"fid": m["fid"], "miou": m["miou"], "steps": run.get("steps", args.steps)}
    lines = [f"load average {os.getloadavg()[0]:.2f}; per-step process CPU s (median):"]
    lines += [
        f"  {k[1]} seed {k[0]} ({k[2]}): {r['step_cpu_s']:.3f}, wall {r['step_wall_s']:.3f}" for k, r in runs.items()
    ]
    for mode in ("steps", "time") if args.equal_time else ("steps",):
        for n in sizes:
            lines += table(scores, args.seeds, names, ref, mode, n)
    lines += size_spread(scores, args.seeds, names, sizes)
    lines += [
        "",
        "sample grids (label | generated | real): " + str(args.work / "runs" / "*" / "*" / "eval*" / "samples.png"),
    ]
    print("\n".join(lines), flush=True)
    if args.json:
        rows = [{"seed": k[0], "variant": k[1], "mode": k[2], "val_images": k[3], **v} for k, v in scores.items()]
        timing = [{"seed": k[0], "variant": k[1], "mode": k[2], **r} for k, r in runs.items()]
        args.json.write_text(json.dumps({"scores": rows, "runs": timing}, indent=2))


if __name__ == "__main__":
    main()
