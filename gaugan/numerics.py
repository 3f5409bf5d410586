"""The device's numeric modes: which reduced precision it runs natively, and deterministic kernels.

``torch.cuda.is_bf16_supported()`` also says True on GPUs that only emulate bf16 (V100, T4: slow,
with no fp16 fallback); the precision choice here asks for native support (compute capability 8.0
and newer), so those GPUs get fp16 (with a GradScaler when training) instead.
"""

from __future__ import annotations

import os

import torch


def native_bf16(device: torch.device | str) -> bool:
    """True when ``device`` computes bf16 in hardware (CUDA compute capability >= 8.0)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # an older torch without the argument
        return torch.cuda.get_device_capability(device) >= (8, 0)


def auto_precision(device: torch.device | str) -> str:
    """``precision: auto``: bf16 on GPUs with native bf16, fp16 on other GPUs, fp32 elsewhere."""
    if torch.device(device).type != "cuda":
        return "fp32"
    return "bf16" if native_bf16(device) else "fp16"


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype inference uses on ``device`` (None: fp32, no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(auto_precision(device))


def set_deterministic(deterministic: bool) -> None:
    """On: deterministic cuDNN convolutions and PyTorch's deterministic algorithms (ops without one
    only warn: nearest-upsampling's backward on CUDA has none), cuDNN autotuning off. Off: cuDNN
    picks the fastest kernels for the fixed shapes (``benchmark``), results may vary run to run."""
    if deterministic:
        # cuBLAS is deterministic only with a fixed workspace; read when cuBLAS starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    # not the NaN-filling of new tensors that comes with it: a debugging aid that costs a memset
    # per allocation and changes no result of correct code
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
