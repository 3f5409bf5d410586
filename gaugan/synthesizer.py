"""Inference, the one API: label maps (with instance maps, a style image or a seed) in, images out.

:class:`Synthesizer` takes label maps as class indices, or as colour-coded maps through the
model's palette (:meth:`Synthesizer.labels_from_colors`), checks them against the model's class
table, and handles sizes: :meth:`Synthesizer.synthesize` accepts any size and returns uint8 images
of that size; calling the object returns the raw float output at a size the generator can take.
The evaluate stage, the MLflow model, the ``synthesize`` command and the training sample grids all
go through it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import remove_spectral_norm
from torch.nn.utils.spectral_norm import SpectralNorm

from gaugan.checkpoint import load_generator
from gaugan.classes import DONTCARE, ClassTable
from gaugan.config import GauGANConfig, size_hw
from gaugan.edges import instance_edges_torch
from gaugan.encoding import encode_labels
from gaugan.errors import InputError
from gaugan.numerics import autocast_dtype

log = logging.getLogger(__name__)


def fold_spectral_norm(module: nn.Module) -> nn.Module:
    """Replace every spectral-norm hook under ``module`` by the plain weight it computes in eval mode.

    An eval forward divides ``weight_orig`` by sigma = u^T W v (stored u, v) before every
    convolution; folding does that division once, so the folded network gives the same outputs
    without the per-call matrix-vector products. In place; for inference only (training needs the
    hooks, and the state_dict keys change: ``weight`` instead of ``weight_orig/_u/_v``).
    """
    for sub in module.modules():
        for hook in list(sub._forward_pre_hooks.values()):
            if isinstance(hook, SpectralNorm):
                remove_spectral_norm(sub, hook.name)
    return module


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
    """Integer maps [B,H,W], [B,1,H,W] or [H,W] (tensor or numpy) -> long [B,H,W] on the CPU."""
    t = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 3:
        raise InputError(f"{name} must be [B,H,W] or [H,W], got shape {tuple(t.shape)}")
    if t.is_floating_point():
        raise InputError(f"{name} must hold integers, got {t.dtype}")
    if t.numel() == 0:
        raise InputError(f"{name} are empty (shape {tuple(t.shape)}): give at least one map of at least 1x1 pixels")
    return t.long().cpu()


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
        raise InputError(f"style images must be float [B,3,H,W] in [-1,1] or uint8 [B,H,W,3], got {tuple(t.shape)}")
    if t.shape[0] == 1 and n > 1:
        t = t.expand(n, -1, -1, -1)
    if t.shape[0] != n:
        raise InputError(f"{t.shape[0]} style images for {n} label maps; give one or one per map")
    return t.float()


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of integer maps [B,H,W] (values kept exactly, via float64)."""
    return F.interpolate(maps[:, None].double(), size=size, mode="nearest").long()[:, 0]


class Synthesizer:
    """A trained generator (and style encoder) ready to turn label maps into images.

    ``synth.synthesize(labels, ...)`` -> uint8 [B,H,W,3] at the labels' size;
    ``synth(labels, ...)`` -> float [B,3,H,W] in [-1, 1] at the labels' size, which must fit the
    generator. Both: inference mode, batched, autocast (native bf16, else fp16) on GPU. :meth:`fold` (or
    ``from_checkpoint(..., fold=True)``) prepares the networks for serving: spectral norm folded
    into plain weights, the generator in channels_last memory format (both measured faster on CPU,
    ``bench/app.py``; bf16 is not used on CPU: it changes the pixels).
    """

    def __init__(
        self,
        netG,
        netE,
        config: GauGANConfig,
        classes: ClassTable | None = None,
        device: torch.device | str = "cpu",
        meta: dict | None = None,
    ):
        self.device = auto_device(device)
        self.netG = netG.to(self.device).eval()
        self.netE = netE.to(self.device).eval() if netE is not None else None
        self.config = config
        self.classes = classes
        self.meta = meta or {}
        self.channels_last = False

    @classmethod
    def from_checkpoint(cls, path: Path | str, device: str | torch.device = "auto", fold: bool = False) -> Synthesizer:
        """``fold``: prepared for serving (:meth:`fold`)."""
        dev = auto_device(device)
        loaded = load_generator(path, dev)
        synth = cls(loaded.netG, loaded.netE, loaded.config, loaded.classes, dev, loaded.meta)
        return synth.fold() if fold else synth

    def fold(self, channels_last: bool = True) -> Synthesizer:
        """Fold spectral norm into the generator's (and encoder's) weights, and (``channels_last``) put
        the generator in channels_last memory format; in place. The same images up to float rounding,
        faster."""
        fold_spectral_norm(self.netG)
        if self.netE is not None:
            fold_spectral_norm(self.netE)
        if channels_last:
            self.netG.to(memory_format=torch.channels_last)
            self.channels_last = True
        return self

    to_uint8 = staticmethod(to_uint8)

    # ------------------------------------------------------------------ sizes and inputs
    @property
    def training_size(self) -> tuple[int, int]:
        """(H, W) of the training crops."""
        return size_hw(self.config.crop_size, self.config.aspect_ratio)

    def fit_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """The size rule, the one every entry point applies (``synthesize``, the app's endpoints, the
        MLflow model): the generator runs at its training size, as the reference's ``test.py`` does (it
        resizes every map to ``crop_size``). Maps [B,H,W] of another size are resized to it with
        nearest neighbour (values kept exactly); :meth:`synthesize` resizes the images back to the
        map's size. A SPADE generator run at another size sees objects at a scale it was not trained
        on, and one with a style encoder cannot run at another size at all."""
        size = self.training_size
        return maps if tuple(maps.shape[-2:]) == size else resize_maps(maps, size)

    def labels_from_colors(self, rgb: np.ndarray) -> np.ndarray:
        """Colour-coded label maps [..., H, W, 3] -> class indices, through the model's palette."""
        if self.classes is None:
            raise InputError("this generator file records no class table, so colour-coded maps cannot be read")
        return self.classes.indices_from_colors(rgb)

    def check_labels(self, labels: torch.Tensor) -> None:
        """Refuse label values the generator has no channel for, naming them and the valid range."""
        cfg = self.config
        values = torch.unique(labels)
        ok = (values >= 0) & (values < cfg.label_nc)
        if cfg.contain_dontcare_label:
            ok |= values == DONTCARE
        bad = values[~ok].tolist()
        if bad:
            table = f"the class table of {self.classes.dataset!r}" if self.classes else "the model's class table"
            allowed = f"0..{cfg.label_nc - 1}" + (f" and {DONTCARE} (dontcare)" if cfg.contain_dontcare_label else "")
            shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise InputError(f"label values {shown} are outside {table}: allowed {allowed}")

    def _maps(self, labels, instances) -> tuple[torch.Tensor, torch.Tensor | None]:
        labels = _int_maps(labels, "label maps")
        self.check_labels(labels)
        if not self.config.use_instance:
            return labels, None
        if instances is None:
            raise InputError(
                "this model was trained with instance maps (use_instance): pass instances, "
                "an instance id map per label map (0 = no instance)"
            )
        instances = _int_maps(instances, "instance maps")
        if instances.shape != labels.shape:
            raise InputError(
                f"instance maps {tuple(instances.shape)} and label maps {tuple(labels.shape)} differ in shape"
            )
        return labels, instances

    # ------------------------------------------------------------------ generation
    def _autocast(self):
        dtype = autocast_dtype(self.device)  # bf16 where the GPU has it natively, else fp16
        if dtype is not None:
            return torch.autocast(self.device.type, dtype=dtype)
        return torch.autocast(self.device.type, enabled=False)

    def __call__(
        self, labels, instances=None, style_images=None, seed: int | None = None, batch_size: int = 8
    ) -> torch.Tensor:
        """``labels`` int [B,H,W] or [H,W] (tensor or numpy; 255 = dontcare); ``instances`` the same
        shape, needed when the model uses instance edges; ``style_images`` (VAE models) the style to
        copy; ``seed`` makes the style noise reproducible (a different seed, a different style)."""
        labels, instances = self._maps(labels, instances)
        return self._generate(labels, instances, style_images, seed, batch_size)

    def synthesize(
        self, labels, instances=None, style_images=None, seed: int | None = None, batch_size: int = 8
    ) -> np.ndarray:
        """Label maps of any size -> uint8 images [B,H,W,3] of the same size.

        Maps of another size than the model's are resized (nearest) to it and the images resized
        back (bilinear, antialiased): :meth:`fit_maps`. A model trained with instance maps and
        given none uses the label map as its instance map (edges at class boundaries only).
        """
        if self.config.use_instance and instances is None:
            log.warning("the model was trained with instance maps and none was given: using the label map as one")
            instances = labels
        labels, instances = self._maps(labels, instances)
        h, w = labels.shape[-2:]
        labels = self.fit_maps(labels)
        instances = self.fit_maps(instances) if instances is not None else None
        images = self._generate(labels, instances, style_images, seed, batch_size)
        if tuple(images.shape[-2:]) != (h, w):
            images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return to_uint8(images)

    def _generate(self, labels, instances, style_images, seed, batch_size) -> torch.Tensor:
        cfg = self.config
        n = labels.shape[0]
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        style = None
        if style_images is not None:
            if not cfg.use_vae or self.netE is None:
                raise InputError("this model has no style encoder (use_vae off or no E weights): no style images")
            style = _style_batch(style_images, n)
            if tuple(style.shape[-2:]) != tuple(labels.shape[-2:]):  # the encoder sees the generated size
                style = F.interpolate(
                    style, size=labels.shape[-2:], mode="bilinear", align_corners=False, antialias=True
                )
        noise = None
        if cfg.use_vae:  # image k's noise comes from seed + k alone: no dependence on batch sizes or offsets
            # (a caller that splits a set passes seed + offset for each part and gets the same noise)
            gens = [torch.Generator().manual_seed(int(seed) + k) if seed is not None else None for k in range(n)]
            noise = torch.stack([torch.randn(cfg.z_dim, generator=g) for g in gens])
        outputs = []
        for start in range(0, n, batch_size):
            end = min(n, start + batch_size)
            outputs.append(
                self._batch(
                    labels[start:end],
                    instances[start:end] if instances is not None else None,
                    noise[start:end] if noise is not None else None,
                    style[start:end] if style is not None else None,
                )
            )
        return torch.cat(outputs)  # outside inference mode: a normal tensor, free to change in place

    @torch.inference_mode()
    def _batch(self, labels, instances, noise, style) -> torch.Tensor:
        """One batch through E (a style image) and G; float [b,3,H,W] on the CPU (an inference tensor)."""
        cfg = self.config
        edges = instance_edges_torch(instances.to(self.device)) if instances is not None else None
        semantics = encode_labels(labels.to(self.device), cfg.label_nc, cfg.contain_dontcare_label, edges)
        if self.channels_last:
            semantics = semantics.contiguous(memory_format=torch.channels_last)
        z = None
        if noise is not None:
            z = noise.to(self.device)
            if style is not None:
                assert self.netE is not None  # style images are taken only when there is an encoder
                mu, logvar = self.netE(style.to(self.device))
                z = mu.float() + z * torch.exp(0.5 * logvar.float())
        with self._autocast():
            out = self.netG(semantics, z)
        return out.float().cpu()
