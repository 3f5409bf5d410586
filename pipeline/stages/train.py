"""The train stage: distributed, resumable, tracked GauGAN training.

Launched by ``torchrun`` (``dvc.yaml`` does that) or as a single plain process. Rank 0 alone
talks to MLflow and writes the outputs:

- ``<train.model_out>``: the generator (EMA weights when on) for evaluate, register and synthesis;
- ``<train.state_out>``: the training state (G, E, D, EMA; with ``save_state: full`` the optimizer
  moments too), from which another run can continue (``train.init_from``);
- ``<train.out_dir>/run.json``: the MLflow run, which evaluate and register add to;
- ``<train.out_dir>/metrics.json`` and ``losses.csv``: for ``dvc metrics`` / ``dvc plots``;
- ``<train.out_dir>/samples.png`` (and ``samples/``): label | generated | real, on fixed validation maps.

With ``train.init_from`` the run starts from the parent that the resolve-parent stage wrote into
``<train.parent_dir>`` (``pipeline/training/parent.py``): step counter and learning-rate schedule
at 0, new classes grown in (``gaugan/parent.py``).

Resume checkpoints live in ``<train.checkpoint_dir>``, outside DVC's outputs (DVC deletes outputs
before it reruns a stage), and are only reused when the settings, the dataset id and the parent match.
"""

from __future__ import annotations

from pathlib import Path

from gaugan.classes import ClassTable
from gaugan.data import dataset_id
from gaugan.numerics import set_deterministic
from pipeline.distributed import init_distributed, shutdown
from pipeline.params import Params, scoped
from pipeline.parents.record import ParentRecord
from pipeline.training.checkpoints import CheckpointStore
from pipeline.training.loop import TrainingLoop
from pipeline.training.session import (
    build_loader,
    build_trainer,
    check_tracking,
    log_start,
    parent_starter,
    restore,
    shared_parent,
    start_tracking,
    write_outputs,
)
from pipeline.training.settings import check_settings, settings_fingerprint

PARAMS = ("seed", "model", "train", "data.out", "mlflow")


def run(params: Params, root: Path = Path("."), resume: str = "auto") -> dict:
    """Train; returns the session's metrics (on every rank). ``resume``: 'auto' or 'never'."""
    params = scoped(params, PARAMS, "train")
    root, t = Path(root), params.train
    data_root = root / params.data.out
    classes = ClassTable.load(data_root)
    set_deterministic(t.deterministic)
    ctx = init_distributed(t.device, t.dist_timeout_s)
    try:
        check_tracking(params, root, ctx)
        check_settings(params, classes, ctx.world_size, data_root)
        dataset = dataset_id(data_root)
        record = ParentRecord.load(root / t.parent_dir, t.init_from)
        fingerprint = settings_fingerprint(params, dataset, record.identity())
        trainer = build_trainer(params, classes, ctx)
        parent = shared_parent(ctx, root / t.parent_dir, record)
        start, parent_info = parent_starter(trainer, parent, params, classes, record, ctx)
        store = CheckpointStore(root / t.checkpoint_dir)
        start_step, run_id = restore(trainer, store, fingerprint, ctx, resume, start)
        log_start(params, ctx, trainer, start_step, dataset, data_root)
        loader = build_loader(params, data_root, trainer, ctx, start_step)
        loop = TrainingLoop(trainer, ctx, t, params.seed, store, classes, root / t.out_dir, fingerprint)
        if ctx.is_main:
            start_tracking(loop, params, root, dataset, run_id, start_step, parent_info)
        metrics = loop.run(loader, start_step)
        # every rank is done with collectives here: rank 0's saving and upload may take longer than
        # dist_timeout_s without failing the others, who leave without waiting for it
        ctx.barrier()
        if ctx.is_main:
            write_outputs(loop, params, root, metrics)
        return metrics
    finally:
        shutdown(ctx)
