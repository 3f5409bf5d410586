"""Instance boundaries: a pixel is an edge when one of its 4 neighbours has another instance id.

Both sides of a boundary are marked and the image border is not an edge: the reference
implementation's rule. It is applied after resizing and cropping, so the edge map always matches
the instance map the network sees. torch is imported lazily so the ingest workers do not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gaugan.errors import InputError

if TYPE_CHECKING:
    import torch


def instance_edges(inst: np.ndarray) -> np.ndarray:
    """``inst`` [H,W] integer ids -> uint8 [H,W], 255 on boundaries, else 0."""
    inst = np.asarray(inst)
    if inst.ndim != 2:
        raise InputError(f"instance map must be [H,W], got shape {inst.shape}")
    edge = np.zeros(inst.shape, dtype=bool)
    horizontal = inst[:, 1:] != inst[:, :-1]
    vertical = inst[1:, :] != inst[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return edge.view(np.uint8) * np.uint8(255)


def instance_edges_torch(inst: torch.Tensor) -> torch.Tensor:
    """``inst`` [B,H,W] or [B,1,H,W] integer ids -> float [B,1,H,W], 1.0 on boundaries."""
    import torch

    if inst.dim() == 3:
        inst = inst.unsqueeze(1)
    if inst.dim() != 4 or inst.shape[1] != 1:
        raise InputError(f"instance maps must be [B,H,W] or [B,1,H,W], got shape {tuple(inst.shape)}")
    edge = torch.zeros(inst.shape, dtype=torch.bool, device=inst.device)
    horizontal = inst[..., :, 1:] != inst[..., :, :-1]
    vertical = inst[..., 1:, :] != inst[..., :-1, :]
    edge[..., :, 1:] |= horizontal
    edge[..., :, :-1] |= horizontal
    edge[..., 1:, :] |= vertical
    edge[..., :-1, :] |= vertical
    return edge.float()
