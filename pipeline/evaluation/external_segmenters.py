"""Segmentation networks exported elsewhere: a TorchScript file, or an ONNX file run by onnxruntime.

The paper's scorers (DeepLabV2, UperNet101, DRN-D-105) live in other code bases; exported once to
TorchScript (``torch.jit.trace``/``script`` + ``.save``) or ONNX they run here without that code.
Each takes the normalised float batch ``[B,3,H,W]`` and returns logits ``[B,C,h,w]`` (``h, w`` may
be smaller than the input: they are upsampled bilinearly), or a dict with ``"out"``, or a tuple
whose first element is the logits. The file's bytes are kept inside the segmenter file, so the
evaluation depends on one file whose sha256 is recorded.

onnxruntime is an optional extra (``pip install .[onnx]``); TorchScript needs nothing more.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from pipeline.errors import SegmenterError

EXTERNAL_ARCHS = ("torchscript", "onnx")


def logits_of(output) -> torch.Tensor:
    """The logits in what a network returned: a tensor, ``{"out": ...}`` or ``(logits, ...)``."""
    if isinstance(output, dict):
        if "out" not in output:
            raise SegmenterError(f"the segmenter returned a dict without 'out' (keys: {sorted(output)})")
        output = output["out"]
    if isinstance(output, list | tuple):
        output = output[0]
    if not torch.is_tensor(output) or output.dim() != 4:
        shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
        raise SegmenterError(f"the segmenter must return logits [B,C,H,W]; it returned {shape}")
    return output


class OnnxNetwork(nn.Module):
    """An ONNX model run by onnxruntime, called like a torch module (CPU, or CUDA when available)."""

    def __init__(self, model_bytes: bytes, device: torch.device | str = "cpu"):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise SegmenterError(
                "segmenter.arch onnx needs onnxruntime, an optional extra: pip install '.[onnx]' "
                "(or export the network to TorchScript and use segmenter.arch: torchscript)"
            ) from None
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(model_bytes, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise SegmenterError(f"onnxruntime cannot load the segmenter: {err}") from err
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().float().cpu().contiguous().numpy()})
        return torch.from_numpy(out[0]).to(x.device)


def load_external(arch: str, model_bytes: bytes, device: torch.device | str = "cpu") -> nn.Module:
    """The network in ``model_bytes`` (the exported file's content), in eval mode on ``device``."""
    if arch == "torchscript":
        try:
            with warnings.catch_warnings():  # deprecated upstream in favour of torch.export; ONNX is the durable format
                warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=FutureWarning)
                net = torch.jit.load(io.BytesIO(model_bytes), map_location=torch.device(device))
        except Exception as err:  # noqa: BLE001 - torch.jit raises RuntimeError and friends
            raise SegmenterError(
                f"not a TorchScript file ({err}); export with torch.jit.trace(...).save(path)"
            ) from err
        return net.eval()
    if arch == "onnx":
        return OnnxNetwork(model_bytes, device)
    raise SegmenterError(f"unknown external segmenter kind {arch!r}; use one of {', '.join(EXTERNAL_ARCHS)}")


@torch.no_grad()
def probe_outputs(net: nn.Module, hw: tuple[int, int], normalised_zero: torch.Tensor) -> int:
    """Run one image through ``net``; returns its number of output classes (and fails early if it cannot run)."""
    try:
        logits = logits_of(net(normalised_zero))
    except SegmenterError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the exported graph raises
        raise SegmenterError(f"the segmenter failed on a {hw[0]}x{hw[1]} input: {err}") from err
    return int(logits.shape[1])
