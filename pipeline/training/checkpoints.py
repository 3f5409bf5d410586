"""Resume checkpoints and the loss history, in ``train.checkpoint_dir`` (outside DVC's outputs).

Rank 0 writes, atomically. A checkpoint is reused only when its settings fingerprint (seed,
architecture, computing settings, dataset id) matches the run's. It is always loaded onto the CPU;
the trainer then places each tensor on its own device.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from gaugan.checkpoint import read_torch_file
from gaugan.errors import CheckpointError
from pipeline.io import atomic_path, atomic_write_text

LOSS_COLUMNS = [
    "step",
    "G_GAN",
    "G_GAN_Feat",
    "G_VGG",
    "KLD",
    "D_Fake",
    "D_real",
    "lr_G",
    "lr_D",
    "skipped_steps",
    "images_per_sec",
]


class CheckpointStore:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.path = self.dir / "last.pt"
        self.history = self.dir / "losses.csv"

    def load(self, fingerprint: str) -> dict | None:
        """The last checkpoint if it belongs to these settings and data, else None."""
        if not self.path.is_file():
            return None
        fix = "; delete it to start training over, or run with --resume never"
        state = read_torch_file(self.path, "training checkpoint", fix)
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.path}: not a training checkpoint (it holds a {type(state).__name__}){fix}")
        return state if state.get("fingerprint") == fingerprint else None

    def save(self, state: dict, history: list[dict]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)
        atomic_write_text(self.history, losses_csv(history))

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.history.unlink(missing_ok=True)

    def read_history(self, up_to_step: int) -> list[dict]:
        if not self.history.is_file():
            return []
        with self.history.open() as fh:
            return [row for row in csv.DictReader(fh) if int(row["step"]) <= up_to_step]


def losses_csv(rows: list[dict]) -> str:
    """The loss history as CSV (one row per logged step; a loss the model does not have is empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOSS_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in LOSS_COLUMNS})
    return buf.getvalue()
