"""SPADE normalization, the SPADE residual block (the paper's Fig. 2 and 4) and the norm helpers.

Module and attribute names follow NVlabs/SPADE so that its published checkpoints load strictly.
"""

from __future__ import annotations

from typing import TypeVar, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm as _hook_spectral_norm
from torch.nn.utils.spectral_norm import SpectralNorm

from gaugan.config import parse_norm_G
from gaugan.errors import ConfigError


# ------------------------------------------------------------------------------------ spectral norm
class _SpectralNormFP32(SpectralNorm):
    """The hook-based spectral norm, with its power iteration and sigma kept in float32.

    Under CUDA fp16 autocast ``torch.mv`` would run in half precision; the divided weight is cast
    for the convolution by autocast anyway, so only the estimate of sigma changes.
    """

    def __call__(self, module: nn.Module, inputs) -> None:
        device_type = getattr(module, self.name + "_orig").device.type
        if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                super().__call__(module, inputs)
        else:
            super().__call__(module, inputs)

    def sigma(self, module: nn.Module) -> torch.Tensor:
        """The spectral norm estimate ``u^T W v`` after this forward's power iteration (training mode),
        the same u, v updates and sigma as the hook's ``compute_weight``, without dividing W."""
        weight = getattr(module, self.name + "_orig")
        u, v = getattr(module, self.name + "_u"), getattr(module, self.name + "_v")
        weight_mat = self.reshape_weight_to_matrix(weight)
        if module.training:
            with torch.no_grad():
                for _ in range(self.n_power_iterations):
                    v = F.normalize(torch.mv(weight_mat.t(), u), dim=0, eps=self.eps, out=v)
                    u = F.normalize(torch.mv(weight_mat, v), dim=0, eps=self.eps, out=u)
                if self.n_power_iterations > 0:  # in-place updated buffers; the graph keeps copies
                    u = u.clone(memory_format=torch.contiguous_format)
                    v = v.clone(memory_format=torch.contiguous_format)
        return torch.dot(u, torch.mv(weight_mat, v))


def spectral_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a convolution under :func:`spectral_norm`, with 1/sigma applied to the smaller
    of the weight and the output: ``conv(x, W / sigma) + b == conv(x, W) / sigma + b``.

    The deep generator blocks have weights up to 144x larger than their outputs (1024x1024x3x3 on
    8x8 maps); dividing W and backpropagating through that division costs several passes over the
    weight per step, scaling the output almost nothing. Same power iteration, same sigma, same
    function; rounding differs at float precision. Only in fp32 training forwards (eval mode and
    autocast take the hook's path), and the module's ``weight`` attribute is not refreshed here.
    """
    hook = _spectral_hook(conv)
    if hook is None or not conv.training or torch.is_autocast_enabled(x.device.type) or len(x.shape) != 4:
        return conv(x)
    if isinstance(conv.padding, str):  # "same"/"valid": the hook's path
        return conv(x)
    weight = cast(torch.Tensor, getattr(conv, hook.name + "_orig"))
    pad, ks, st = conv.padding, conv.kernel_size, conv.stride
    out_h = (x.shape[2] + 2 * pad[0] - ks[0]) // st[0] + 1
    out_w = (x.shape[3] + 2 * pad[1] - ks[1]) // st[1] + 1
    if x.shape[0] * weight.shape[0] * out_h * out_w >= weight.numel():
        return conv(x)
    y = conv._conv_forward(x, weight, None) / hook.sigma(conv)
    return y if conv.bias is None else y + conv.bias.view(1, -1, 1, 1)


def _spectral_hook(module: nn.Module) -> _SpectralNormFP32 | None:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, _SpectralNormFP32) and hook.dim == 0:
            return hook
    return None


_ModuleT = TypeVar("_ModuleT", bound=nn.Module)


def spectral_norm(module: _ModuleT) -> _ModuleT:
    """``torch.nn.utils.spectral_norm`` (hook-based: its ``weight_orig/_u/_v`` keys are the
    reference checkpoints' keys, and unlike the parametrization it pickles), float32 under autocast."""
    module = _hook_spectral_norm(module)
    for hook in module._forward_pre_hooks.values():
        if type(hook) is SpectralNorm:
            hook.__class__ = _SpectralNormFP32
    return module


# ------------------------------------------------------------------------------------ norms
class SyncableBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d built for a 'syncbatch' setting: :func:`convert_sync_batchnorm` turns exactly
    these (not plain 'batch' norms) into SyncBatchNorm. Same state_dict as BatchNorm2d."""


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Swap every :class:`SyncableBatchNorm2d` for ``nn.SyncBatchNorm`` sharing its parameters and buffers.

    Only for CUDA + NCCL: SyncBatchNorm cannot run on CPU tensors. Returns the (possibly new) module.
    """
    if isinstance(module, SyncableBatchNorm2d):
        sync = nn.SyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, process_group
        )
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias
        if module.track_running_stats:
            sync.running_mean, sync.running_var = module.running_mean, module.running_var
            sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in list(module.named_children()):
        converted = convert_sync_batchnorm(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module


def param_free_norm(kind: str, channels: int, affine: bool = False) -> nn.Module:
    """'instance' | 'batch' | 'syncbatch' (built as :class:`SyncableBatchNorm2d`)."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=affine)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=affine)
    if kind == "syncbatch":
        return SyncableBatchNorm2d(channels, affine=affine)
    raise ConfigError(f"unknown norm {kind!r}; use instance, batch or syncbatch")


class SPADE(nn.Module):
    """Normalize without parameters, then modulate per pixel: ``norm(x) * (1 + gamma) + beta``,
    gamma and beta computed from the label map resized (nearest) to x's size."""

    def __init__(self, norm_G: str, norm_nc: int, label_nc: int, hidden: int = 128):
        super().__init__()
        _, spade, kind, ks = parse_norm_G(norm_G)
        if not spade:
            raise ConfigError(f"SPADE needs a spade norm setting such as 'spadesyncbatch3x3', got {norm_G!r}")
        self.param_free_norm = param_free_norm(kind, norm_nc)
        pad = ks // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, ks, padding=pad), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, ks, padding=pad)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, ks, padding=pad)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        if segmap.shape[2:] != x.shape[2:]:
            segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        gamma = self.mlp_gamma
        if gamma.bias is None:
            return normalized * (1 + gamma(actv)) + self.mlp_beta(actv)
        # (1 + gamma) straight out of the convolution (its bias + 1), and one fused multiply-add:
        # the same function as ``normalized * (1 + gamma) + beta`` with two passes fewer over the
        # largest feature maps, rounding aside
        scale = gamma._conv_forward(actv, gamma.weight, gamma.bias + 1)
        return torch.addcmul(self.mlp_beta(actv), normalized, scale)


class PlainNorm(nn.Module):
    """SPADE's interface without the modulation: the label map is ignored (ablation baseline)."""

    def __init__(self, kind: str, norm_nc: int):
        super().__init__()
        self.param_free_norm = param_free_norm(kind, norm_nc)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor | None = None) -> torch.Tensor:
        return self.param_free_norm(x)


def generator_norm(norm_G: str, norm_nc: int, label_nc: int, hidden: int) -> nn.Module:
    _, spade, kind, _ = parse_norm_G(norm_G)
    return SPADE(norm_G, norm_nc, label_nc, hidden) if spade else PlainNorm(kind, norm_nc)


class SPADEResnetBlock(nn.Module):
    """Two (norm, leaky ReLU 0.2, 3x3 conv) units with a skip; the skip is a learned
    (norm, 1x1 conv without bias) when the channel count changes."""

    def __init__(self, fin: int, fout: int, norm_G: str, semantic_nc: int, hidden: int = 128):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = nn.Conv2d(fin, fmiddle, 3, padding=1)
        self.conv_1 = nn.Conv2d(fmiddle, fout, 3, padding=1)
        if self.learned_shortcut:
            self.conv_s = nn.Conv2d(fin, fout, 1, bias=False)
        if norm_G.startswith("spectral"):
            self.conv_0 = spectral_norm(self.conv_0)
            self.conv_1 = spectral_norm(self.conv_1)
            if self.learned_shortcut:
                self.conv_s = spectral_norm(self.conv_s)
        norm = norm_G[len("spectral") :] if norm_G.startswith("spectral") else norm_G
        self.norm_0 = generator_norm(norm, fin, semantic_nc, hidden)
        self.norm_1 = generator_norm(norm, fmiddle, semantic_nc, hidden)
        if self.learned_shortcut:
            self.norm_s = generator_norm(norm, fin, semantic_nc, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        if seg.shape[2:] != x.shape[2:]:  # once for the block's two or three SPADEs (same result)
            seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        x_s = spectral_conv(self.conv_s, self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = spectral_conv(self.conv_0, F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = spectral_conv(self.conv_1, F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx


def nonspade_norm(norm: str, layer: nn.Module) -> nn.Module:
    """D's and E's norms ('spectralinstance', 'batch', 'none', ...): spectral norm on the layer,
    then ``Sequential(layer, norm)``. The layer's bias is dropped when a norm follows (the norm
    would cancel it), as in the reference, so its checkpoint keys match."""
    if norm.startswith("spectral"):
        layer = spectral_norm(layer)
        norm = norm[len("spectral") :]
    if norm in ("", "none"):
        return layer
    if getattr(layer, "bias", None) is not None:
        delattr(layer, "bias")
        layer.register_parameter("bias", None)
    channels = getattr(layer, "out_channels", None) or cast(torch.Tensor, layer.weight_orig).shape[0]
    if norm == "instance":
        return nn.Sequential(layer, nn.InstanceNorm2d(channels, affine=False))
    if norm in ("batch", "syncbatch"):
        return nn.Sequential(layer, param_free_norm(norm, channels, affine=True))
    raise ConfigError(f"unknown norm {norm!r}; use [spectral]instance, batch, syncbatch or none")
