"""The training loader: global batches defined by the step number, split over the processes.

Batch ``b`` of the run is a fixed slice of a seeded permutation of the training set (one
permutation per epoch). Process ``r`` of ``W`` takes the ``r``-th ``1/W`` of every global batch,
so one process and several processes see the same global batches, and a run resumed at step ``k``
continues with exactly the batch it would have seen, with no sampler state to save.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gaugan.data import PreparedDataset
from gaugan.transforms import Geometry, PairTransform
from pipeline.errors import TrainError


def sample_seed(run_seed: int, epoch: int, index: int) -> int:
    """A well-mixed 31-bit seed for one sample's augmentation in one epoch."""
    ss = np.random.SeedSequence([run_seed & 0xFFFFFFFF, epoch, index])
    return int(ss.generate_state(1)[0] & 0x7FFFFFFF)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for each step from ``start_step`` to ``max_steps``, this rank's (index, seed) pairs."""

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        start_step: int,
        max_steps: int,
    ):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} does not divide over {world_size} processes")
        if num_samples < global_batch:
            raise TrainError(
                f"the training split has {num_samples} samples, fewer than train.batch_size={global_batch}; "
                "lower train.batch_size or add data"
            )
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.per_rank = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.start_step = start_step
        self.max_steps = max_steps
        self.steps_per_epoch = num_samples // global_batch  # drop_last: every step has a full batch

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, 0x5EED]).permutation(self.num_samples)

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        start = pos * self.global_batch + self.rank * self.per_rank
        return [(int(i), sample_seed(self.seed, epoch, int(i))) for i in perm[start : start + self.per_rank]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.max_steps):
            yield self.batch_for_step(step)

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)


class SeededTransformDataset(Dataset):
    """Applies the pair transform with the seed the sampler chose for this sample."""

    def __init__(self, base: PreparedDataset, transform: PairTransform):
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        return self.transform(self.base[index], seed)


def collate(samples: list[dict]) -> dict:
    batch = {
        "id": [s["id"] for s in samples],
        "image": torch.stack([s["image"] for s in samples]),
        "label": torch.stack([s["label"] for s in samples]),
    }
    if "edge" in samples[0]:
        batch["edge"] = torch.stack([s["edge"] for s in samples])
    return batch


def limit_worker_threads(worker_id: int) -> None:
    """One thread per loader worker: torch's (DataLoader's default), and OpenCV's when it is loaded
    (its own pool would otherwise start a thread per core in every worker of every rank)."""
    torch.set_num_threads(1)
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.setNumThreads(1)


def build_train_loader(
    dataset: PreparedDataset,
    geometry: Geometry,
    use_instance: bool,
    *,
    global_batch: int,
    rank: int,
    world_size: int,
    seed: int,
    start_step: int,
    max_steps: int,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    sampler = StepBatchSampler(len(dataset), global_batch, rank, world_size, seed, start_step, max_steps)
    # uint8 images and edges: a quarter of the bytes through pinned memory, converted on the device
    wrapped = SeededTransformDataset(dataset, PairTransform(geometry, use_instance, uint8=True))
    return DataLoader(
        wrapped,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        worker_init_fn=limit_worker_threads,
        prefetch_factor=4 if num_workers > 0 else None,
    )
