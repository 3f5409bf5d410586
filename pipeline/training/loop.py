"""The training loop: one trainer step per batch; on rank 0, logged losses, sample grids and checkpoints.

Every step reseeds torch from (seed, step, rank), and every batch is a function of the step
(``loader.py``), so a run resumed from a checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gaugan.classes import ClassTable
from gaugan.errors import NonFiniteLossError
from gaugan.synthesizer import Synthesizer
from gaugan.trainer import GauGANTrainer
from pipeline.distributed import DistContext
from pipeline.errors import TrainError
from pipeline.logs import Progress
from pipeline.params import TrainSettings
from pipeline.tracking import Tracker
from pipeline.training.checkpoints import CheckpointStore
from pipeline.training.samples import SampleMaker


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one step on one process: the noise of a step depends on nothing else."""
    return seed * 1_000_003 + step * 7919 + rank


@dataclass
class TrainingLoop:
    """Runs the steps of a session. Rank 0 holds the tracker, the sample maker and the loss history."""

    trainer: GauGANTrainer
    ctx: DistContext
    settings: TrainSettings
    seed: int
    store: CheckpointStore
    classes: ClassTable
    out_dir: Path
    fingerprint: str  # what a checkpoint must match to be resumed
    # rank 0 only (pipeline.training.session.start_tracking sets them):
    run_id: str | None = None
    tracker: Tracker | None = None
    samples: SampleMaker | None = None
    history: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)  # recorded in the generator file

    def run(self, loader, start_step: int) -> dict:
        """Train from ``start_step`` to ``train.max_steps``; returns the metrics of the session."""
        t, step = self.settings, start_step
        last: dict = {}
        progress = Progress(t.max_steps, "train", every=t.log_every, initial=start_step, enabled=self.ctx.is_main)
        window = _Window(t.batch_size)
        started = time.perf_counter()
        try:
            for batch in loader:
                torch.manual_seed(step_seed(self.seed, step, self.ctx.rank))
                batch = {
                    k: (v.to(self.ctx.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()
                }
                read = self._reads(step + 1)  # every rank reads at the same steps (a halt stops them all)
                losses = self.trainer.train_step(batch, read=read)
                step += 1
                window.steps += 1
                last = losses if read else last
                if self.ctx.is_main:
                    shown = {k: v for k, v in losses.items() if not k.startswith("lr") and k != "skipped_steps"}
                    progress.update(1, **(shown if read else {}))
                    self._record(step, losses, window)
                if step % t.checkpoint_every == 0 and step < t.max_steps:
                    self.checkpoint(step)
                    self.ctx.barrier()
        except NonFiniteLossError as err:
            self._end("FAILED")
            kept = (
                f"the last good checkpoint is kept at {self.store.path}"
                if self.store.path.is_file()
                else "no checkpoint was written yet"
            )
            raise TrainError(f"training stopped: {err}; {kept}. Lower train.lr, or use train.precision: fp32") from None
        except BaseException:
            self._end("KILLED")
            raise
        finally:
            progress.close()
        self.checkpoint(step)
        return self._metrics(step, last, time.perf_counter() - started)

    def _reads(self, step: int) -> bool:
        """Steps whose numbers are read from the device (one host sync): logged steps, checkpoints and
        the last; the others queue work without waiting for the GPU."""
        t = self.settings
        return step % t.log_every == 0 or step % t.checkpoint_every == 0 or step >= t.max_steps

    def _record(self, step: int, losses: dict, window: _Window) -> None:
        """Rank 0 after a step: losses every ``log_every`` steps, a sample grid every ``sample_every``."""
        t = self.settings
        if step % t.log_every == 0 or step == t.max_steps:
            row = {"step": step, **losses, "images_per_sec": window.rate()}
            self.history.append(row)
            assert self.tracker is not None  # rank 0 holds the tracker
            self.tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step)
        if step % t.sample_every == 0 or step == t.max_steps:
            assert self.samples is not None and self.tracker is not None  # rank 0 holds both
            grid = self.samples.write(self.synthesizer(), self.out_dir / "samples" / f"step_{step:07d}.png")
            self.tracker.log_artifact(grid, "samples")

    def synthesizer(self) -> Synthesizer:
        """The generator as it is now (EMA weights when on), for sample grids and the exported file."""
        netG, netE = self.trainer.inference_generator()
        return Synthesizer(netG, netE, self.trainer.config, self.classes, self.ctx.device)

    def checkpoint(self, step: int) -> None:
        # No RNG state: every step reseeds from (seed, step, rank) and every sample's augmentation
        # from (seed, epoch, index), so step k's randomness needs nothing saved.
        if self.ctx.is_main:
            state = {"fingerprint": self.fingerprint, "mlflow_run_id": self.run_id, "step": step}
            self.store.save({**state, "trainer": self.trainer.state_dict()}, self.history)

    def _metrics(self, step: int, last: dict, seconds: float) -> dict:
        t = self.settings
        metrics = {
            "steps": step,
            "images_seen": step * t.batch_size,
            "train_seconds_this_session": round(seconds, 2),
            **{k: float(v) for k, v in last.items()},
        }
        if self.history:
            metrics["images_per_sec"] = float(self.history[-1]["images_per_sec"])
        return metrics

    def _end(self, status: str) -> None:
        if self.tracker is not None:
            self.tracker.end(status)


class _Window:
    """Images per second since the last logged step."""

    def __init__(self, batch_size: int):
        self.batch_size, self.steps, self.started = batch_size, 0, time.perf_counter()

    def rate(self) -> float:
        now = time.perf_counter()
        ips = self.steps * self.batch_size / max(now - self.started, 1e-9)
        self.steps, self.started = 0, now
        return ips
