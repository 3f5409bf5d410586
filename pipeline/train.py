"""The train stage: distributed, resumable, tracked GauGAN training.

Launched by ``torchrun`` (``dvc.yaml`` does that) or as a single plain process. Rank 0 alone
talks to MLflow, writes checkpoints and the stage outputs:

- ``<train.model_out>``: the generator (EMA weights when on) for evaluate/register/synthesize;
- ``<train.out_dir>/run.json``: the MLflow run, which evaluate and register add to;
- ``<train.out_dir>/metrics.json`` and ``losses.csv``: for ``dvc metrics`` / ``dvc plots``;
- ``<train.out_dir>/samples.png``: label | generated | real, on fixed validation maps.

Resume checkpoints live in ``<train.checkpoint_dir>``, outside DVC's outputs (DVC deletes outputs
before it reruns a stage), and are only reused when the settings and the data match.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch

from gaugan.checkpoint import save_generator
from gaugan.config import GauGANConfig
from gaugan.data import ClassTable, PreparedDataset, load_class_table
from gaugan.trainer import GauGANTrainer, NonFiniteLossError, TrainOptions
from gaugan.transforms import Geometry
from pipeline.distributed import DistContext, broadcast_object, init_distributed, shutdown
from pipeline.io import atomic_path, atomic_write_json, atomic_write_text
from pipeline.params import Params
from pipeline.tracking import git_commit
from pipeline.train_data import build_train_loader
from pipeline.train_samples import SampleMaker

LOSS_COLUMNS = ["step", "G_GAN", "G_GAN_Feat", "G_VGG", "KLD", "D_Fake", "D_real", "lr_G", "lr_D", "images_per_sec"]
# Settings that do not change what is computed: a checkpoint stays valid when only these change.
RESUME_NEUTRAL_KEYS = {
    "max_steps",
    "checkpoint_every",
    "log_every",
    "sample_every",
    "num_workers",
    "nproc",
    "out_dir",
    "model_out",
    "checkpoint_dir",
    "device",
    "compile",
}


class TrainError(RuntimeError):
    """A training problem with a message that says what to change."""


# ----------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------


def model_config(params: Params, classes: ClassTable) -> GauGANConfig:
    m = params.model
    return GauGANConfig(
        label_nc=classes.label_nc,
        contain_dontcare_label=classes.contain_dontcare_label,
        use_instance=m.use_instance,
        ngf=m.ngf,
        ndf=m.ndf,
        nef=m.nef,
        z_dim=m.z_dim,
        spade_hidden=m.spade_hidden,
        use_vae=m.use_vae,
        num_upsampling_layers=m.num_upsampling_layers,
        norm_G=m.norm_G,
        norm_D=m.norm_D,
        norm_E=m.norm_E,
        num_D=m.num_D,
        n_layers_D=m.n_layers_D,
        crop_size=params.train.crop_size,
        aspect_ratio=params.train.aspect_ratio,
    )


def check_settings(params: Params, classes: ClassTable, world_size: int, data_root: Path) -> None:
    """Everything that would fail later fails here, before any work, naming the key to change."""
    problems = []
    t, m = params.train, params.model
    if m.label_nc is not None and m.label_nc != classes.label_nc:
        problems.append(
            f"model.label_nc is {m.label_nc} but {data_root / 'classes.json'} has label_nc {classes.label_nc}; "
            "set model.label_nc: null (take it from the data) or fix it"
        )
    if m.use_instance and not classes.has_instances:
        problems.append(
            f"model.use_instance is true but the dataset at {data_root} has no instance maps; "
            "set model.use_instance: false"
        )
    if t.batch_size % world_size:
        problems.append(
            f"train.batch_size ({t.batch_size}) does not divide over {world_size} processes; "
            f"use a multiple of {world_size} or change train.nproc / --nproc-per-node"
        )
    if t.decay_start_step is not None and t.decay_start_step > t.max_steps:
        problems.append(f"train.decay_start_step ({t.decay_start_step}) is after train.max_steps ({t.max_steps})")
    if problems:
        raise TrainError("invalid training settings:\n  - " + "\n  - ".join(problems))


def resolve_precision(setting: str, device: torch.device) -> str:
    if setting != "auto":
        if setting in ("bf16", "fp16") and device.type == "cpu" and setting == "fp16":
            raise TrainError("train.precision fp16 needs a GPU; use bf16 or fp32 on CPU")
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def train_options(params: Params, device: torch.device) -> TrainOptions:
    t = params.train
    return TrainOptions(
        lr=t.lr,
        beta1=t.beta1,
        beta2=t.beta2,
        ttur=t.ttur,
        lambda_feat=t.lambda_feat,
        lambda_vgg=t.lambda_vgg,
        lambda_kld=t.lambda_kld,
        vgg_weights=t.vgg_weights,
        ema_decay=t.ema_decay if t.ema else None,
        precision=resolve_precision(t.precision, device),
        channels_last=(t.channels_last == "on") or (t.channels_last == "auto" and device.type == "cuda"),
        compile=t.compile,
        total_steps=t.max_steps,
        decay_start_step=t.decay_start_step,
    )


def data_version(data_root: Path) -> str:
    """A short content hash of the prepared dataset (ids, splits and source hashes)."""
    import pandas as pd

    manifest = pd.read_parquet(data_root / "manifest.parquet", columns=["id", "split", "source_hash"])
    rows = sorted(zip(manifest["split"], manifest["id"], manifest["source_hash"]))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def settings_fingerprint(params: Params, version: str) -> str:
    train = {k: v for k, v in params.train.model_dump().items() if k not in RESUME_NEUTRAL_KEYS}
    payload = {"seed": params.seed, "model": params.model.model_dump(), "train": train, "data": version}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# checkpoints and loss history (rank 0 writes, every rank reads)
# ----------------------------------------------------------------------------------------------


class CheckpointStore:
    def __init__(self, directory: Path):
        self.dir = directory
        self.path = directory / "last.pt"
        self.history = directory / "losses.csv"

    def load(self, fingerprint: str, device: torch.device) -> dict | None:
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location=device, weights_only=True)
        if state.get("fingerprint") != fingerprint:
            return None
        return state

    def save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.history.unlink(missing_ok=True)

    def read_history(self, up_to_step: int) -> list[dict]:
        if not self.history.is_file():
            return []
        with self.history.open() as fh:
            return [row for row in csv.DictReader(fh) if int(row["step"]) <= up_to_step]

    def write_history(self, rows: list[dict]) -> None:
        atomic_write_text(self.history, _csv_text(rows))


def _csv_text(rows: list[dict]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOSS_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in LOSS_COLUMNS})
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# MLflow (rank 0 only)
# ----------------------------------------------------------------------------------------------


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value
    return out


class Tracker:
    """Opens (or re-opens, on resume) the MLflow run of this model and logs into it."""

    def __init__(self, params: Params, root: Path, classes: ClassTable):
        import mlflow

        from pipeline.tracking import ensure_experiment, resolve_tracking_uri

        self.mlflow = mlflow
        self.uri = resolve_tracking_uri(params.mlflow.tracking_uri, root)
        self.experiment = params.mlflow.experiment or f"gaugan-{classes.dataset}"
        self.experiment_id = ensure_experiment(self.experiment, self.uri)
        self.run = None

    def start(self, run_id: str | None, params: Params, tags: dict) -> str:
        mlflow = self.mlflow
        mlflow.set_tracking_uri(self.uri)
        if run_id is not None:
            self.run = mlflow.start_run(run_id=run_id)
        else:
            self.run = mlflow.start_run(experiment_id=self.experiment_id)
            flat = _flatten("", params.model_dump(by_alias=True), {})
            items = list(flat.items())
            for i in range(0, len(items), 100):
                mlflow.log_params({k: ("null" if v is None else v) for k, v in items[i : i + 100]})
        mlflow.set_tags({k: v for k, v in tags.items() if v is not None})
        return self.run.info.run_id

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path, folder: str) -> None:
        self.mlflow.log_artifact(str(path), artifact_path=folder)

    def end(self, status: str) -> None:
        if self.run is not None:
            self.mlflow.end_run(status=status)
            self.run = None


# ----------------------------------------------------------------------------------------------
# the stage
# ----------------------------------------------------------------------------------------------


def run_train(params: Params, root: Path | str = ".", resume: str = "auto") -> dict:
    """Train; returns the final metrics (on every rank). ``resume``: 'auto' or 'never'."""
    if resume not in ("auto", "never"):
        raise TrainError(f"--resume must be 'auto' or 'never', got {resume!r}")
    root = Path(root)
    t = params.train
    data_root = root / params.data.out
    classes = load_class_table(data_root)
    ctx = init_distributed(t.device)
    try:
        check_settings(params, classes, ctx.world_size, data_root)
        return _train(params, root, data_root, classes, ctx, resume)
    finally:
        shutdown(ctx)


def _train(params: Params, root: Path, data_root: Path, classes: ClassTable, ctx: DistContext, resume: str) -> dict:
    t = params.train
    version = data_version(data_root)
    fingerprint = settings_fingerprint(params, version)
    store = CheckpointStore(root / t.checkpoint_dir)
    config = model_config(params, classes)
    options = train_options(params, ctx.device)

    torch.manual_seed(params.seed)  # identical initial weights on every rank and every run
    trainer = GauGANTrainer(config, options, ctx.device)

    state = store.load(fingerprint, ctx.device) if (resume == "auto" and ctx.is_main) else None
    state = broadcast_object(ctx, state)  # ranks on other machines need not see rank 0's disk
    start_step = 0
    run_id = None
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        start_step = int(state["step"])
        run_id = state.get("mlflow_run_id")
    elif ctx.is_main and resume == "never":
        store.discard()
    if ctx.distributed:
        trainer.distribute(device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    train_set = PreparedDataset(data_root, "train", load_instances=config.use_instance)
    geometry = Geometry(t.load_size, t.crop_size, t.aspect_ratio, t.flip, train=True)
    loader = build_train_loader(
        train_set,
        geometry,
        config.use_instance,
        global_batch=t.batch_size,
        rank=ctx.rank,
        world_size=ctx.world_size,
        seed=params.seed,
        start_step=start_step,
        max_steps=t.max_steps,
        num_workers=t.num_workers,
        pin_memory=ctx.device.type == "cuda",
    )

    tracker = None
    history: list[dict] = []
    samples = None
    out_dir = root / t.out_dir
    if ctx.is_main:
        tracker = Tracker(params, root, classes)
        tags = {
            "git_commit": git_commit(root),
            "data_version": version,
            "dataset": classes.dataset,
            "settings_fingerprint": fingerprint,
            "world_size": str(ctx.world_size),
            "device": ctx.device.type,
            "precision": options.precision,
            "dvc_exp": os.environ.get("DVC_EXP_NAME"),
            "dvc_baseline": os.environ.get("DVC_EXP_BASELINE_REV"),
        }
        run_id = tracker.start(run_id, params, tags)
        history = store.read_history(start_step)
        samples = SampleMaker(data_root, classes, config, t, seed=params.seed)
        from pipeline.tracking import RunRef, write_run_ref

        write_run_ref(out_dir / "run.json", RunRef(run_id, tracker.uri, tracker.experiment))

    def checkpoint(step: int) -> None:
        if ctx.is_main:
            store.save(
                {
                    "fingerprint": fingerprint,
                    "step": step,
                    "trainer": trainer.state_dict(),
                    "mlflow_run_id": run_id,
                    # No RNG state: every step reseeds from (seed, step, rank) and every sample's
                    # augmentation from (seed, epoch, index), so step k's randomness needs nothing saved.
                }
            )
            store.write_history(history)

    progress = None
    if ctx.is_main:
        from tqdm import tqdm

        progress = tqdm(
            total=t.max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True, disable=None
        )
    step = start_step
    window_start, window_steps = time.perf_counter(), 0
    last_losses: dict = {}
    started = time.perf_counter()
    try:
        for batch in loader:
            # Per-step seeding: the noise of a step depends on (seed, step, rank) only, so a resumed
            # run draws exactly what an uninterrupted one would.
            torch.manual_seed(params.seed * 1_000_003 + step * 7919 + ctx.rank)
            batch = {k: (v.to(ctx.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
            losses = trainer.train_step(batch)
            step += 1
            window_steps += 1
            last_losses = losses
            if ctx.is_main:
                progress.update(1)
                progress.set_postfix(
                    {k: f"{v:.3f}" for k, v in losses.items() if not k.startswith("lr")}, refresh=False
                )
                if step % t.log_every == 0 or step == t.max_steps:
                    elapsed = time.perf_counter() - window_start
                    ips = window_steps * t.batch_size / max(elapsed, 1e-9)
                    window_start, window_steps = time.perf_counter(), 0
                    row = {"step": step, **losses, "images_per_sec": ips}
                    history.append(row)
                    tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step)
                if step % t.sample_every == 0 or step == t.max_steps:
                    grid = samples.write(trainer.inference_generator(), out_dir / "samples" / f"step_{step:07d}.png")
                    tracker.log_artifact(grid, "samples")
            if step % t.checkpoint_every == 0 and step < t.max_steps:
                checkpoint(step)
                ctx.barrier()
    except NonFiniteLossError as err:
        if ctx.is_main:
            tracker.end("FAILED")
        kept = (
            f"the last good checkpoint is kept at {store.path}"
            if store.path.is_file()
            else "no checkpoint was written yet"
        )
        raise TrainError(f"training stopped: {err}; {kept}. Lower train.lr, or use train.precision: fp32") from None
    except BaseException:
        if ctx.is_main and tracker is not None:
            tracker.end("KILLED")
        raise
    finally:
        if progress is not None:
            progress.close()

    wall = time.perf_counter() - started
    checkpoint(step)
    metrics = {
        "steps": step,
        "images_seen": step * t.batch_size,
        "train_seconds_this_session": round(wall, 2),
        **{k: float(v) for k, v in last_losses.items()},
    }
    if history:
        metrics["images_per_sec"] = float(history[-1]["images_per_sec"])
    if ctx.is_main:
        netG, netE = trainer.inference_generator()
        meta = {
            "run_id": run_id,
            "data_version": version,
            "steps": step,
            "settings_fingerprint": fingerprint,
            "git_commit": tags["git_commit"],
        }
        model_out = root / t.model_out
        model_out.parent.mkdir(parents=True, exist_ok=True)
        save_generator(model_out, netG, netE, config, json.loads((data_root / "classes.json").read_text()), meta)
        atomic_write_json(out_dir / "metrics.json", metrics)
        atomic_write_text(out_dir / "losses.csv", _csv_text(history))
        final_grid = samples.write(trainer.inference_generator(), out_dir / "samples.png")
        tracker.log_artifact(final_grid, "samples")
        tracker.log_artifact(out_dir / "losses.csv", "train")
        tracker.log_metrics(
            {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}, step
        )
        tracker.end("FINISHED")
    ctx.barrier()
    return metrics
