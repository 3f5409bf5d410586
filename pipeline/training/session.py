"""The pieces of a training session: the trainer, the resume point, the loader, the MLflow run, the outputs.

The train stage (``pipeline/stages/train.py``) calls these in order. Rank 0 alone talks to MLflow
and writes files; every rank builds the same trainer from the same seed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from gaugan.checkpoint import save_generator, save_train_state
from gaugan.classes import ClassTable
from gaugan.data import PreparedDataset, split_size
from gaugan.errors import GauGANError
from gaugan.parent import ParentModel, start_from_parent
from gaugan.trainer import NETWORK_PARTS, OPTIMIZER_PARTS, GauGANTrainer
from gaugan.transforms import Geometry
from pipeline.distributed import DistContext, broadcast_object
from pipeline.errors import TrackingError, TrainError
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.params import Params
from pipeline.parents.record import ParentRecord
from pipeline.tracking import RunRef, Tracker, require_server, resolve_tracking_uri, write_run_ref
from pipeline.training.checkpoints import CheckpointStore, losses_csv
from pipeline.training.loader import build_train_loader
from pipeline.training.loop import TrainingLoop
from pipeline.training.parent import load_parent_model, run_parent_tags
from pipeline.training.samples import SampleMaker
from pipeline.training.settings import model_config, train_options
from pipeline.versioning.gitstate import git_state
from pipeline.versioning.lineage import dvc_lineage

log = logging.getLogger(__name__)


def build_trainer(params: Params, classes: ClassTable, ctx: DistContext) -> GauGANTrainer:
    """The trainer at its initial weights: the same on every rank and in every run of these settings."""
    torch.manual_seed(params.seed)
    return GauGANTrainer(model_config(params, classes), train_options(params, ctx.device), ctx.device)


def check_tracking(params: Params, root: Path, ctx: DistContext) -> None:
    """Before any work: rank 0 asks the MLflow tracking server for its health once; if it does not
    answer, every rank stops at once with the same message naming the URI."""
    problem = None
    if ctx.is_main:
        try:
            require_server(resolve_tracking_uri(params.mlflow.tracking_uri, root))
        except TrackingError as err:
            problem = f"{err}; nothing was trained"
    problem = broadcast_object(ctx, problem)
    if problem is not None:
        raise TrackingError(problem)


def restore(
    trainer: GauGANTrainer,
    store: CheckpointStore,
    fingerprint: str,
    ctx: DistContext,
    resume: str,
    start: Callable[[], None] | None = None,
) -> tuple[int, str | None]:
    """Load the matching checkpoint (rank 0 reads it to CPU, every rank gets it); -> (start step, MLflow run id).

    ``resume``: 'auto' continues from a checkpoint of the same settings, data and parent; 'never'
    discards it. Without one, ``start`` (loading the parent model) sets the trainer's first weights.
    """
    if resume not in ("auto", "never"):
        raise TrainError(f"--resume must be 'auto' or 'never', got {resume!r}")
    state = store.load(fingerprint) if (resume == "auto" and ctx.is_main) else None
    state = broadcast_object(ctx, state)  # ranks on other machines need not see rank 0's disk
    start_step, run_id = 0, None
    if state is not None:
        trainer.load_state_dict(state["trainer"])  # CPU tensors, copied into the trainer's own
        start_step, run_id = int(state["step"]), state.get("mlflow_run_id")
    else:
        if ctx.is_main and resume == "never":
            store.discard()
        if start is not None:
            start()
    if ctx.distributed:
        trainer.distribute(device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    return start_step, run_id


def shared_parent(ctx: DistContext, parent_dir: Path, record: ParentRecord) -> ParentModel | None:
    """Rank 0 reads the parent (to CPU) and every rank gets it; a file it refuses stops every rank with
    the same message (the others would otherwise wait at the broadcast until the timeout)."""
    parent, problem = None, None
    if ctx.is_main:
        try:
            parent = load_parent_model(parent_dir, record)
        except GauGANError as err:
            problem = err
    parent, problem = broadcast_object(ctx, (parent, problem))
    if problem is not None:
        raise problem
    return parent


def parent_starter(
    trainer: GauGANTrainer, parent: ParentModel | None, params: Params, classes: ClassTable, record: ParentRecord, ctx
) -> tuple[Callable[[], None], dict]:
    """A ``start`` for :func:`restore` that loads the parent into the fresh trainer (every rank: the
    same weights), and the parent's summary that the run records (filled in when it runs)."""
    summary: dict = record.summary([]) if parent is not None else {}

    def start() -> None:
        if parent is None:
            return
        t = params.train
        warnings = start_from_parent(trainer, parent, classes, t.class_remap, t.init_optimizer)
        for warning in warnings if ctx.is_main else []:
            log.warning("train: %s", warning)
        summary.update(record.summary(warnings))
        if ctx.is_main:
            log.info(
                "train: starting from %s (%s), step counter and learning-rate schedule at 0", parent.source, parent.kind
            )

    return start, summary


def log_start(
    params: Params, ctx: DistContext, trainer: GauGANTrainer, start_step: int, dataset: str, data_root: Path
) -> None:
    if not ctx.is_main:
        return
    t, o = params.train, trainer.options
    log.info(
        "train: %s, world size %d (%s), global batch %d = %d per process, precision %s, channels_last %s, compile %s",
        ctx.device,
        ctx.world_size,
        ctx.backend or "one process",
        t.batch_size,
        t.batch_size // ctx.world_size,
        o.precision,
        o.channels_last,
        o.compile,
    )
    log.info(
        "train: dataset %s (%s, %d training images), %s at step %d of %d",
        dataset,
        data_root,
        split_size(data_root, "train"),
        "resuming" if start_step else "starting",
        start_step,
        t.max_steps,
    )


def build_loader(params: Params, data_root: Path, trainer: GauGANTrainer, ctx: DistContext, start_step: int):
    t, use_instance = params.train, trainer.config.use_instance
    train_set = PreparedDataset(data_root, "train", load_instances=use_instance)
    geometry = Geometry(t.load_size, t.crop_size, t.aspect_ratio, t.flip, t.preprocess_mode)
    return build_train_loader(
        train_set,
        geometry,
        use_instance,
        global_batch=t.batch_size,
        rank=ctx.rank,
        world_size=ctx.world_size,
        seed=params.seed,
        start_step=start_step,
        max_steps=t.max_steps,
        num_workers=t.num_workers,
        pin_memory=ctx.device.type == "cuda",
    )


def start_tracking(
    loop: TrainingLoop, params: Params, root: Path, dataset: str, run_id: str | None, start_step: int, parent: dict
) -> None:
    """Rank 0: start (or re-open) the model's MLflow run, write ``run.json``, and give the loop its
    tracker, the loss history so far, the sample maker and the provenance of the generator file."""
    t, classes, ctx = params.train, loop.classes, loop.ctx
    git = git_state(root)
    tags = {
        **git.tags(),  # git_commit, git_dirty and the changed files' hash: never a dirty workspace passed off as clean
        "dataset_id": dataset,
        "dataset": classes.dataset,
        "settings_fingerprint": loop.fingerprint,
        "world_size": str(ctx.world_size),
        "device": ctx.device.type,
        "precision": loop.trainer.options.precision,
        "dvc_exp": os.environ.get("DVC_EXP_NAME"),
        "dvc_baseline": os.environ.get("DVC_EXP_BASELINE_REV"),
        **(run_parent_tags(parent) if run_id is None else {}),  # a resumed run keeps the tags of its start
    }
    tracker = Tracker(
        resolve_tracking_uri(params.mlflow.tracking_uri, root), params.mlflow.experiment or f"gaugan-{classes.dataset}"
    )
    settings = {
        "seed": params.seed,
        "data": {"out": params.data.out},
        "model": params.model.model_dump(),
        "train": t.model_dump(),
        "mlflow": params.mlflow.model_dump(),
    }
    # a DVC experiment's run is named after it, so the MLflow UI's run list and `dvc exp show` match
    loop.run_id = tracker.start(run_id, settings, tags, run_name=os.environ.get("DVC_EXP_NAME"))
    if run_id is None:  # a new run: its training data, as DVC knows it (a resumed run has it already)
        lineage = dvc_lineage(root, params.data.out)
        tracker.log_dataset(lineage.mlflow_dataset(root, classes.dataset, dataset), lineage.tags(dataset))
    extra = {"parent": parent} if parent else None
    write_run_ref(root / t.out_dir / "run.json", RunRef(loop.run_id, tracker.uri, tracker.experiment), extra)
    loop.tracker = tracker
    loop.history = loop.store.read_history(start_step)
    data_root = root / params.data.out
    loop.samples = SampleMaker(
        data_root, classes, t.crop_size, t.aspect_ratio, loop.trainer.config.use_instance, params.seed
    )
    loop.provenance = {
        "run_id": loop.run_id,
        "dataset_id": dataset,
        "settings_fingerprint": loop.fingerprint,
        **git.tags(),
        "torch_threads": torch.get_num_threads(),  # CPU results depend on it: `reproduce --force` uses the same
        **({"parent": parent} if parent else {}),
    }


def write_outputs(loop: TrainingLoop, params: Params, root: Path, metrics: dict) -> None:
    """Rank 0: the generator file, metrics.json, losses.csv and samples.png; the run is then finished."""
    t, tracker = params.train, loop.tracker
    synth = loop.synthesizer()
    model_out = root / t.model_out
    meta = {**loop.provenance, "steps": metrics["steps"]}
    save_generator(model_out, synth.netG, synth.netE, synth.config, loop.classes, meta)
    state = loop.trainer.state_dict(NETWORK_PARTS + (OPTIMIZER_PARTS if t.save_state == "full" else ()))
    save_train_state(root / t.state_out, state, loop.trainer.config, loop.classes, {**meta, "save_state": t.save_state})
    out_dir = root / t.out_dir
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_text(out_dir / "losses.csv", losses_csv(loop.history))
    assert loop.samples is not None and tracker is not None  # rank 0 holds both
    grid = loop.samples.write(synth, out_dir / "samples.png")
    tracker.log_artifact(grid, "samples")
    tracker.log_artifact(out_dir / "losses.csv", "train")
    tracker.log_metrics(metrics, metrics["steps"])
    tracker.end("FINISHED")
    log.info("train: %d steps; generator written to %s, training state to %s", metrics["steps"], model_out, t.state_out)
