"""Retraining after a data drop: fine-tune the champion, or train from scratch for the same time?

    python -m bench.retrain [--seeds 0 1 2] [--champion-steps 500] [--finetune-steps 100] [--drop 0.2] [--json OUT]

Per seed, in a scratch folder: the demo dataset of params.yaml; a champion trained
``--champion-steps`` steps from scratch (params.yaml's demo recipe, its training state kept); then a
data drop of ``--drop`` x the training split, half of it showing a class the champion never saw
("fence", appended to the class table); a segmenter trained on the grown data (the one scorer of
the seed); then two challengers on the grown data with the same wall-clock budget:

- ``finetune``: ``train.init_from`` = the champion's training state, ``--finetune-steps`` steps
  (the label channels grow for the new class; the step counter and the schedule start over);
- ``scratch``: from step 0, as many steps (the same network, so the same seconds per step).

All three are scored on the unchanged validation split with the same backbone and segmenter.
Printed: per seed and as mean +- std over seeds, FID and mIoU of the champion and both
challengers, and the training seconds of each, then a verdict per figure (fine-tune better than
scratch on every seed or not). Never part of the tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from bench.workspace import bench_params, demo_data, demo_segmenter


def _params(root: Path, seed: int, updates: dict):
    base = {
        "seed": seed,
        "data.format": "folder",
        "data.source": "raw",
        "data.out": "data",
        "data.workers": 1,
        "train.out_dir": "train",
        "train.checkpoint_dir": "runs",
        "train.model_out": "models/generator.pt",
        "train.state_out": "models/train_state.pt",
        "train.save_state": "full",
        "train.num_workers": 0,
        "train.device": "cpu",
        "segmenter.out": "models/segmenter.pt",
        "segmenter.metrics": "segmenter/metrics.json",
        "segmenter.device": "cpu",
        "evaluate.stats_cache": "cache",
        "evaluate.device": "cpu",
        "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "mlflow.experiment": "bench-retrain",
    }
    return bench_params({**base, **updates}, "bench/retrain.py")


def _train(root: Path, seed: int, steps: int, init_from: str | None) -> float:
    """One training run of ``steps`` steps (decay over its second half); -> seconds of its training loop
    (the stage's set-up, sample grids and MLflow calls aside: the same for both challengers)."""
    from pipeline.stages import resolve_parent, train

    params = _params(
        root,
        seed,
        {"train.max_steps": steps, "train.decay_start_step": steps // 2, "train.init_from": init_from},
    )
    if init_from is None:  # override() skips None values: null is the file's default
        assert params.train.init_from is None, "params.yaml's train.init_from must be null for the bench"
    resolve_parent.run(params, root)
    return float(train.run(params, root, resume="never")["train_seconds_this_session"])


def _score(root: Path, seed: int, generator: Path, out: str) -> dict:
    from pipeline.stages import evaluate

    metrics = evaluate.run(_params(root, seed, {"train.model_out": str(generator), "evaluate.out_dir": out}), root)
    return {"fid": metrics["fid"], "miou": metrics["miou"]}


def run_seed(
    scratch: Path, seed: int, champion_steps: int, finetune_steps: int, drop: float, segmenter_steps: int | None
) -> dict:
    from pipeline.datasets.demo import add_demo_drop
    from pipeline.stages import ingest

    root = scratch / f"seed{seed}"
    root.mkdir(parents=True)
    params = _params(root, seed, {})
    demo_data(params, root)
    row: dict = {"seed": seed, "champion_seconds": _train(root, seed, champion_steps, None)}
    champion = root / "champion"
    champion.mkdir()
    for name in ("generator.pt", "train_state.pt"):
        shutil.copy2(root / "models" / name, champion / name)

    added = add_demo_drop(
        root / "raw", params.data.demo, max(1, round(drop * params.data.demo.num_train)), "fence", seed + 1
    )
    ingest.run(params, root, progress=False)
    demo_segmenter(_params(root, seed, {"segmenter.steps": segmenter_steps}), root)
    row["drop"] = len(added)
    row["champion"] = _score(root, seed, champion / "generator.pt", "eval_champion")

    row["finetune_seconds"] = _train(root, seed, finetune_steps, str(champion / "train_state.pt"))
    row["finetune"] = _score(root, seed, root / "models/generator.pt", "eval_finetune")
    row["scratch_seconds"] = _train(root, seed, finetune_steps, None)
    row["scratch"] = _score(root, seed, root / "models/generator.pt", "eval_scratch")
    print(json.dumps(row))
    return row


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {spread:.3f}"


def report(rows: list[dict]) -> dict:
    head = ("seed", "champion FID / mIoU", "finetune FID / mIoU (s)", "scratch FID / mIoU (s)")
    print("\n{:>4} | {:>20} | {:>26} | {:>26}".format(*head))
    for r in rows:
        c, f, s = r["champion"], r["finetune"], r["scratch"]
        print(
            f"{r['seed']:>4} | {c['fid']:9.3f} / {c['miou']:.3f} | {f['fid']:9.3f} / {f['miou']:.3f} "
            f"({r['finetune_seconds']:5.0f}) | {s['fid']:9.3f} / {s['miou']:.3f} ({r['scratch_seconds']:5.0f})"
        )
    summary: dict = {}
    for arm in ("champion", "finetune", "scratch"):
        for metric in ("fid", "miou"):
            summary[f"{arm}_{metric}"] = _mean_std([r[arm][metric] for r in rows])
    for key in ("champion_seconds", "finetune_seconds", "scratch_seconds"):
        summary[key] = _mean_std([r[key] for r in rows])
    fid_wins = sum(r["finetune"]["fid"] < r["scratch"]["fid"] for r in rows)
    miou_wins = sum(r["finetune"]["miou"] > r["scratch"]["miou"] for r in rows)
    summary["verdict_fid"] = f"fine-tune better than scratch on {fid_wins} of {len(rows)} seeds"
    summary["verdict_miou"] = f"fine-tune better than scratch on {miou_wins} of {len(rows)} seeds"
    for key, value in summary.items():
        print(f"{key:>20}: {value}")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--champion-steps", type=int, default=500)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--drop", type=float, default=0.2, help="new training samples, as a fraction of the split")
    ap.add_argument("--segmenter-steps", type=int, default=None, help="default: params.yaml's segmenter.steps")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--keep", type=Path, default=None, help="work in this folder and keep it (default: a temporary one)"
    )
    args = ap.parse_args()
    from pipeline.logs import configure_logging

    configure_logging(verbosity=-1)
    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as tmp:
        scratch = args.keep or Path(tmp)
        rows = [
            run_seed(scratch, s, args.champion_steps, args.finetune_steps, args.drop, args.segmenter_steps)
            for s in args.seeds
        ]
    summary = {"rows": rows, "summary": report(rows), "args": {k: str(v) for k, v in vars(args).items()}}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
