"""Promotion on evidence on the demo (issue #20): seeds against each other, a 10x longer training against both.

    python -m bench.promotion --work /tmp/promotion [--steps 50] [--seeds 0 1 2] [--factor 10]
                              [--segmenter-steps N] [--size PX] [--ngf N] [--json OUT]

In ``--work`` (a fresh folder, or one from an earlier call: finished models are reused): the demo
dataset and its segmenter (params.yaml's settings), then the demo generator trained ``--steps``
steps with each of ``--seeds`` and ``--factor`` x ``--steps`` steps with the first seed (the
learning rate held for the first 60 % of the steps, as params.yaml's 300 of 500), each scored by
the evaluate stage (its own folder: ``models/<name>/generator.pt``, ``outputs/<name>/``).

Printed:

1. every short model against every other short model, and the long model against every short
   one: the paired bootstrap (register.bootstrap resamples, register.confidence) of
   ``register.metric`` and the ``if_significant`` decision with ``register.min_improvement``;
2. the register stage itself, in turn, into a fresh MLflow registry in ``--work``: the first short
   seed (the first champion), the second short seed, then the long model, with each
   registration.json's decision sentence (the version's tags hold the same).

Then a JSON summary (``--json`` writes it to a file too). Training dominates the time: the defaults
train 3 x 50 + 500 demo steps; ``--size`` and ``--ngf`` make a smaller model for a loaded CPU.
``--factor 0`` compares the seeds alone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import time
from pathlib import Path

from bench.workspace import bench_params, demo_data, demo_segmenter

SEGMENTER_STEPS: int | None = None  # --segmenter-steps
SMALL: dict = {}  # --size / --ngf: a smaller demo for a loaded CPU
REGISTRY_DB = "registry.db"  # the registrations' store, apart from the training runs' mlflow.db


def _params(work: Path, name: str | None = None, steps: int = 0, seed: int = 0, db: str = "mlflow.db"):
    updates: dict = {
        "mlflow.tracking_uri": f"sqlite:///{work / db}",
        "segmenter.steps": SEGMENTER_STEPS,
        **SMALL,
    }
    if name is not None:
        updates.update(
            {
                "seed": seed,
                "train.max_steps": steps,
                "train.decay_start_step": int(steps * 0.6),
                "train.model_out": f"models/{name}/generator.pt",
                "train.out_dir": f"outputs/{name}/train",
                "train.checkpoint_dir": f"runs/{name}",
                "evaluate.out_dir": f"outputs/{name}/evaluate",
                "register.out": f"outputs/{name}/registration.json",
                "train.sample_every": steps,
                "train.checkpoint_every": steps,
            }
        )
    return bench_params(updates, "bench/promotion.py")


def prepare(work: Path) -> None:
    """The demo dataset and the segmenter that scores mIoU, as the pipeline makes them."""
    params = _params(work)
    demo_data(params, work, progress=True)
    demo_segmenter(params, work)


def model(work: Path, name: str, steps: int, seed: int) -> dict:
    """Train and evaluate one generator (skipped when its metrics exist); its metrics.json."""
    from pipeline.stages.evaluate import run as evaluate
    from pipeline.stages.train import run as train

    params = _params(work, name, steps, seed)
    metrics = work / params.evaluate.out_dir / "metrics.json"
    if not metrics.is_file():
        started = time.perf_counter()
        train(params, work, resume="never")
        print(f"{name}: trained {steps} steps (seed {seed}) in {time.perf_counter() - started:.0f} s", flush=True)
        evaluate(params, work)
    return json.loads(metrics.read_text())


def pairs(work: Path, short: list[str], longer: list[str]) -> list[dict]:
    """The paired bootstrap and the if_significant decision for each pair (challenger, champion)."""
    from pipeline.evaluation.evidence import Evidence, paired_bootstrap
    from pipeline.registry.promotion import verdict

    s = _params(work).registry
    evidence = {n: Evidence.load(work / "outputs" / n / "evaluate" / "per_image.npz") for n in [*short, *longer]}
    rows = []
    for challenger, champion in [*itertools.permutations(short, 2), *itertools.product(longer, short)]:
        result = paired_bootstrap(
            evidence[challenger], evidence[champion], s.metric, s.greater_is_better, s.bootstrap, s.confidence, seed=0
        )
        decision = verdict(result, s, 0, champion, None)
        rows.append({"challenger": challenger, "champion": champion, **result, "promoted": decision.promoted})
        print(
            f"{challenger:>12} vs {champion:<12} {s.metric} {result['challenger']:.4f} vs {result['champion']:.4f}: "
            f"improvement {result['improvement']:+.4f}, {s.confidence:.0%} interval [{result['ci_low']:+.4f}, "
            f"{result['ci_high']:+.4f}] -> {'promoted' if decision.promoted else 'not promoted'}",
            flush=True,
        )
    return rows


def registrations(work: Path, order: list[tuple[str, int, int]]) -> list[dict]:
    """The register stage in turn into a fresh registry (its own database: MLflow keeps the training
    runs' one open): what each registration.json says."""
    from pipeline.stages.register import run as register

    (work / REGISTRY_DB).unlink(missing_ok=True)
    shutil.rmtree(work / "mlartifacts", ignore_errors=True)
    results = []
    for name, steps, seed in order:
        # a fresh run per model (the training runs went to the other database)
        params = _params(work, name, steps, seed, REGISTRY_DB)
        _fresh_run(work, params)
        result = register(params, work)
        results.append({"model": name, **result})
        print(f"register {name}: version {result['version']}: {result['reason']}", flush=True)
    return results


def _fresh_run(work: Path, params) -> None:
    import mlflow

    from pipeline.tracking import RunRef, ensure_experiment, write_run_ref

    uri = params.mlflow.tracking_uri
    client = mlflow.MlflowClient(uri)
    run = client.create_run(ensure_experiment("gaugan-demo", uri), run_name=params.train.model_out)
    client.set_terminated(run.info.run_id)
    write_run_ref(work / params.train.out_dir / "run.json", RunRef(run.info.run_id, uri, "gaugan-demo"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--factor", type=int, default=10, help="the long model's steps / --steps; 0: no long model")
    parser.add_argument("--segmenter-steps", type=int, help="segmenter.steps (default: params.yaml's)")
    parser.add_argument("--size", type=int, help="demo images and crops of this many pixels (default: params.yaml's)")
    parser.add_argument("--ngf", type=int, help="model.ngf, ndf and nef (default: params.yaml's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    global SEGMENTER_STEPS
    SEGMENTER_STEPS = args.segmenter_steps
    if args.size:
        SMALL.update(
            {
                "data.demo.width": args.size,
                "data.demo.height": args.size,
                "train.crop_size": args.size,
                "train.load_size": args.size + args.size // 8,
            }
        )
    if args.ngf:
        SMALL.update({"model.ngf": args.ngf, "model.ndf": args.ngf, "model.nef": args.ngf})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    prepare(work)
    short = {f"s{args.steps}-seed{s}": (args.steps, s) for s in args.seeds}
    long = {f"s{args.steps * args.factor}-seed{args.seeds[0]}": (args.steps * args.factor, args.seeds[0])}
    models = {**short, **(long if args.factor > 1 else {})}  # --factor 0 or 1: the seeds alone
    metrics = {name: model(work, name, steps, seed) for name, (steps, seed) in models.items()}
    metric = _params(work).registry.metric
    for name, m in metrics.items():
        print(
            f"{name:>14}: {metric} {m[metric]:.4f} (FID interval [{m['fid_ci_low']:.3f}, {m['fid_ci_high']:.3f}]), "
            f"mIoU {m['miou']:.3f}"
        )
    rows = pairs(work, list(short), [n for n in models if n not in short])
    order = [(n, *models[n]) for n in [*list(short)[:2], *(n for n in models if n not in short)]]
    summary = {
        "metrics": {n: {k: m[k] for k in ("fid", "kid_mean", "miou", "accuracy")} for n, m in metrics.items()},
        "pairs": rows,
        "registrations": registrations(work, order),
    }
    print(json.dumps(summary, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
