"""Inference: label maps (with instance maps, a style image or a seed) in, images out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gaugan.checkpoint import load_generator
from gaugan.config import GauGANConfig
from gaugan.encoding import encode_labels


def auto_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [B,3,H,W] in [-1, 1] -> uint8 [B,H,W,3]."""
    images = torch.as_tensor(images).detach().float().clamp(-1, 1)
    return ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _int_maps(x, name: str) -> torch.Tensor:
    t = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 3:
        raise ValueError(f"{name} must be [B,H,W] or [H,W], got shape {tuple(t.shape)}")
    if t.is_floating_point():
        raise ValueError(f"{name} must hold integers, got {t.dtype}")
    return t.long()


def _style_batch(style, n: int) -> torch.Tensor:
    """float [B,3,H,W] in [-1,1] (or uint8 [B,H,W,3] / [H,W,3]) -> float [n,3,H,W]; one image is used for all."""
    t = style if torch.is_tensor(style) else torch.from_numpy(np.ascontiguousarray(style))
    if t.dtype == torch.uint8:
        if t.dim() == 3:
            t = t.unsqueeze(0)
        t = t.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    elif t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[1] != 3:
        raise ValueError(f"style images must be float [B,3,H,W] in [-1,1] or uint8 [B,H,W,3], got {tuple(t.shape)}")
    if t.shape[0] == 1 and n > 1:
        t = t.expand(n, -1, -1, -1)
    if t.shape[0] != n:
        raise ValueError(f"{t.shape[0]} style images for {n} label maps; give one or one per map")
    return t.float()


class Synthesizer:
    """``synth(labels, instances=None, style_images=None, seed=None, batch_size=8)`` -> float
    [B,3,H,W] in [-1, 1] on the CPU. No grad, batched, autocast (bf16, else fp16) on GPU."""

    def __init__(
        self,
        netG,
        netE,
        config: GauGANConfig,
        classes: dict | None = None,
        device: torch.device | str = "cpu",
        meta: dict | None = None,
    ):
        self.device = auto_device(device)
        self.netG = netG.to(self.device).eval()
        self.netE = netE.to(self.device).eval() if netE is not None else None
        self.config = config
        self.classes = classes or {}
        self.meta = meta or {}

    @classmethod
    def from_checkpoint(cls, path: Path | str, device: str | torch.device = "auto") -> Synthesizer:
        dev = auto_device(device)
        loaded = load_generator(path, dev)
        return cls(loaded.netG, loaded.netE, loaded.config, loaded.classes, dev, loaded.meta)

    def _autocast(self):
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast(self.device.type, enabled=False)

    @torch.no_grad()
    def __call__(
        self, labels, instances=None, style_images=None, seed: int | None = None, batch_size: int = 8
    ) -> torch.Tensor:
        """``labels`` int [B,H,W] or [H,W] (tensor or numpy; 255 = dontcare); ``instances`` the same
        shape, needed when the model uses instance edges; ``style_images`` (VAE models) the style to
        copy; ``seed`` makes the style noise reproducible (a different seed, a different style)."""
        from gaugan.edges import instance_edges_torch

        cfg = self.config
        labels = _int_maps(labels, "label maps")
        n = labels.shape[0]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        insts = None
        if cfg.use_instance:
            if instances is None:
                raise ValueError(
                    "this model was trained with instance maps (use_instance): pass instances, "
                    "an instance id map per label map (0 = no instance)"
                )
            insts = _int_maps(instances, "instance maps")
            if insts.shape != labels.shape:
                raise ValueError(
                    f"instance maps {tuple(insts.shape)} and label maps {tuple(labels.shape)} differ in shape"
                )
        style = None
        if style_images is not None:
            if not cfg.use_vae or self.netE is None:
                raise ValueError(
                    "this model has no style encoder (use_vae off or no E weights): style_images cannot be used"
                )
            style = _style_batch(style_images, n)
        noise = None
        if cfg.use_vae:
            # all noise drawn up front: a sample's output does not depend on the batch size
            generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
            noise = torch.randn(n, cfg.z_dim, generator=generator)
        outputs = []
        for start in range(0, n, batch_size):
            end = min(n, start + batch_size)
            edges = instance_edges_torch(insts[start:end].to(self.device)) if insts is not None else None
            semantics = encode_labels(
                labels[start:end].to(self.device), cfg.label_nc, cfg.contain_dontcare_label, edges
            )
            z = None
            if noise is not None:
                z = noise[start:end].to(self.device)
                if style is not None:
                    mu, logvar = self.netE(style[start:end].to(self.device))
                    z = mu.float() + z * torch.exp(0.5 * logvar.float())
            with self._autocast():
                out = self.netG(semantics, z)
            outputs.append(out.float().cpu())
        return torch.cat(outputs)

    to_uint8 = staticmethod(to_uint8)
