"""The networks' label input: one-hot classes, a dontcare channel for 255, and the edge channel."""

from __future__ import annotations

import torch

from gaugan.classes import DONTCARE
from gaugan.errors import InputError


def encode_labels(
    label: torch.Tensor,
    label_nc: int,
    contain_dontcare_label: bool,
    edges: torch.Tensor | None = None,
    check: bool = True,
) -> torch.Tensor:
    """``label`` int [B,H,W] (or [B,1,H,W]) -> float [B, label_nc (+1 dontcare) (+1 edge), H, W].

    Value ``c`` sets channel ``c``; 255 sets the dontcare channel (index ``label_nc``) when the
    model has one. Any other value is an InputError naming it: silently clamping would train on
    wrong classes. ``edges`` float [B,1,H,W] (1 on instance boundaries) becomes the last channel.
    ``check=False`` skips the range check, which waits for the device (the training step's maps
    come from a prepared dataset whose values were checked when it was written); an out-of-range
    value then fails inside ``scatter_`` (an index error on CPU, a device-side assert on CUDA).
    """
    if label.dim() == 4 and label.shape[1] == 1:
        label = label[:, 0]
    if label.dim() != 3:
        raise InputError(f"label maps must be [B,H,W] or [B,1,H,W], got shape {tuple(label.shape)}")
    if label.is_floating_point():
        raise InputError(f"label maps must hold integer class indices, got dtype {label.dtype}")
    label = label.long()
    nc = label_nc + int(contain_dontcare_label)
    index = label
    if contain_dontcare_label:
        index = torch.where(label == DONTCARE, torch.full_like(label, label_nc), label)
    bad = (index < 0) | (index >= nc) if check else None
    if bad is not None and bool(bad.any()):
        values = sorted(set(label[bad].unique()[:5].tolist()))
        allowed = f"0..{label_nc - 1}" + (f" or {DONTCARE} (dontcare)" if contain_dontcare_label else "")
        raise InputError(
            f"label value {values[0]} is outside the class table: allowed values are {allowed}"
            + (f" (also found {values[1:]})" if len(values) > 1 else "")
        )
    one_hot = torch.zeros(label.shape[0], nc, label.shape[1], label.shape[2], device=label.device)
    one_hot.scatter_(1, index.unsqueeze(1), 1.0)
    if edges is not None:
        if edges.dim() == 3:
            edges = edges.unsqueeze(1)
        if tuple(edges.shape) != (label.shape[0], 1, label.shape[1], label.shape[2]):
            raise InputError(
                f"edge maps {tuple(edges.shape)} do not match label maps {tuple(label.shape)}; expected [B,1,H,W]"
            )
        one_hot = torch.cat([one_hot, edges.to(device=one_hot.device, dtype=one_hot.dtype)], dim=1)
    return one_hot
