"""Instance boundaries: 1 where a 4-neighbour has another instance id (both sides), borders excluded.

This is the reference implementation's rule; it is applied after resizing and cropping, so the
edge map always matches the instance map the network sees.
"""

from __future__ import annotations

import numpy as np
import torch


def instance_edges(inst: np.ndarray) -> np.ndarray:
    """``inst`` [H,W] integer ids -> uint8 [H,W], 255 on boundaries, else 0."""
    inst = np.asarray(inst)
    edge = np.zeros(inst.shape, dtype=bool)
    horizontal = inst[:, 1:] != inst[:, :-1]
    vertical = inst[1:, :] != inst[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return edge.astype(np.uint8) * 255


def instance_edges_torch(inst: torch.Tensor) -> torch.Tensor:
    """``inst`` [B,H,W] or [B,1,H,W] integer ids -> float [B,1,H,W], 1.0 on boundaries."""
    if inst.dim() == 3:
        inst = inst.unsqueeze(1)
    edge = torch.zeros(inst.shape, dtype=torch.bool, device=inst.device)
    horizontal = inst[..., :, 1:] != inst[..., :, :-1]
    vertical = inst[..., 1:, :] != inst[..., :-1, :]
    edge[..., :, 1:] |= horizontal
    edge[..., :, :-1] |= horizontal
    edge[..., 1:, :] |= vertical
    edge[..., :-1, :] |= vertical
    return edge.float()
