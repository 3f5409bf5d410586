"""Inference: label maps (and instance maps, a style image or a seed) in, images out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gaugan.checkpoint import load_generator
from gaugan.edges import instance_edges_torch
from gaugan.encoding import encode_labels


def auto_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Synthesizer:
    def __init__(self, netG, netE, config, classes: dict | None = None, device: torch.device | str = "cpu",
                 meta: dict | None = None):
        self.device = auto_device(device)
        self.netG = netG.to(self.device).eval()
        self.netE = netE.to(self.device).eval() if netE is not None else None
        self.config = config
        self.classes = classes or {}
        self.meta = meta or {}

    @classmethod
    def from_checkpoint(cls, path: Path | str, device: str | torch.device = "auto") -> "Synthesizer":
        dev = auto_device(device)
        loaded = load_generator(path, dev)
        return cls(loaded.netG, loaded.netE, loaded.config, loaded.classes, dev, loaded.meta)

    @staticmethod
    def _as_batch(x, dtype=torch.long) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
        if t.dim() == 2:
            t = t.unsqueeze(0)
        return t.to(dtype)

    @torch.no_grad()
    def __call__(self, labels, instances=None, style_images=None, seed: int | None = None,
                 batch_size: int = 8) -> torch.Tensor:
        """Returns float images [B,3,H,W] in [-1, 1]. ``style_images``: float [B,3,H,W] in [-1, 1]."""
        cfg = self.config
        labels = self._as_batch(labels)
        if cfg.use_instance and instances is None:
            raise ValueError("this model was trained with instance maps: pass instances (an instance map per label map)")
        insts = self._as_batch(instances) if instances is not None else None
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        # all noise drawn up front, so a sample's output does not depend on the batch size
        noise = torch.randn(labels.shape[0], cfg.z_dim, generator=generator) if cfg.use_vae else None
        outputs = []
        for start in range(0, labels.shape[0], batch_size):
            lab = labels[start:start + batch_size].to(self.device)
            edges = instance_edges_torch(insts[start:start + batch_size].to(self.device)) if cfg.use_instance else None
            semantics = encode_labels(lab, cfg.label_nc, cfg.contain_dontcare_label, edges)
            z = None
            if cfg.use_vae:
                if style_images is not None and self.netE is not None:
                    style = torch.as_tensor(style_images)[start:start + batch_size].to(self.device).float()
                    mu, logvar = self.netE(style)
                    z = mu + noise[start:start + batch_size].to(self.device) * torch.exp(0.5 * logvar)
                else:
                    z = noise[start:start + batch_size].to(self.device)
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else torch.autocast("cpu", enabled=False)
            with autocast:
                out = self.netG(semantics, z)
            outputs.append(out.float().cpu())
        return torch.cat(outputs)

    @staticmethod
    def to_uint8(images: torch.Tensor) -> np.ndarray:
        return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
