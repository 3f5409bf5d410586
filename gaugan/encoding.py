"""The generator's input: one-hot label map, a dontcare channel for 255, and the edge channel."""

from __future__ import annotations

import torch

DONTCARE = 255


def encode_labels(label: torch.Tensor, label_nc: int, contain_dontcare_label: bool,
                  edges: torch.Tensor | None = None) -> torch.Tensor:
    """``label`` [B,H,W] int -> float [B, label_nc (+1 dontcare) (+1 edge), H, W]."""
    if label.dim() == 4:
        label = label[:, 0]
    label = label.long()
    nc = label_nc + int(contain_dontcare_label)
    index = label.clone()
    if contain_dontcare_label:
        index[label == DONTCARE] = label_nc
    bad = (index < 0) | (index >= nc)
    if bool(bad.any()):
        value = int(label[bad][0])
        raise ValueError(
            f"label value {value} is outside the class table (0..{label_nc - 1}"
            + (", 255 = dontcare)" if contain_dontcare_label else ")")
        )
    one_hot = torch.zeros(label.shape[0], nc, *label.shape[1:], device=label.device)
    one_hot.scatter_(1, index.unsqueeze(1), 1.0)
    if edges is not None:
        one_hot = torch.cat([one_hot, edges.to(one_hot.dtype)], dim=1)
    return one_hot
