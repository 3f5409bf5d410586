"""Feature extractors for FID/KID, and where the Inception weights come from.

Two backbones, both ``nn.Module`` mapping uint8 images ``[B,3,H,W]`` to float32 features ``[B,D]``:

- ``inception``: the TF-ported FID Inception (``pt_inception-2015-12-05-6726825d.pth`` as
  pytorch-fid names it, ``weights-inception-2015-12-05-6726825d.pth`` as torch-fidelity names it:
  the same weights), run through torchmetrics' ``NoTrainInceptionV3`` with ``antialias=False``,
  i.e. torch-fidelity's TensorFlow-1 bilinear resize to 299x299, as the published numbers were
  computed. Only this backbone is paper-comparable.
- ``tiny``: a small CNN whose weights come from a fixed seed. It needs no file and no network, its
  features are not degenerate, and two processes build bit-identical weights. Its numbers are
  only comparable with other ``tiny`` numbers of the same seed and dimension.

:func:`write_surrogate_inception_weights` writes a stand-in weights file for the Inception
architecture (random convolutions, batch-norm statistics calibrated on synthetic images) for
tests and benchmarks on machines that cannot download the real file. Never report numbers
computed with it: its sha256 differs from the real file's and is recorded with every figure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import FeatureWeightsError
from pipeline.io import atomic_path, digest, sha256_file

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
# torch-fidelity's name first (what torchmetrics would download), then pytorch-fid's.
INCEPTION_FILENAMES = (
    "weights-inception-2015-12-05-6726825d.pth",
    "pt_inception-2015-12-05-6726825d.pth",
)
# The file name's suffix is the first 8 hex digits of its sha256 (torch.hub's convention, checked by
# download_url_to_file(hash_prefix=...)). Only a file with exactly this full digest is the real one;
# any other file's numbers are flagged as not paper-comparable.
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_SHA256_PREFIX = INCEPTION_SHA256[:8]
INCEPTION_FEATURE_DIMS = (64, 192, 768, 2048)
TINY_SEED = 20190318  # SPADE's arXiv date; any fixed value would do, but it must never change
TINY_INPUT_SIZE = 64
log = logging.getLogger(__name__)


@dataclass
class FeatureBackbone:
    """An extractor plus the facts to record beside every number computed with it."""

    module: nn.Module
    info: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identifies the features (for caching real-image features), with where and how they are
        computed: CPU features never meet GPU ones, nor TF32 ones full-float32 ones."""
        i = self.info
        return f"{i['name']}-{i['feature_dim']}-{i.get('weights_sha256') or 'noweights'}-{i['resize']}-{self.numerics}"

    @property
    def numerics(self) -> str:
        """The extractor's device kind and arithmetic: ``cpu-fp32``, ``cuda-<GPU name>-fp32`` (TF32 off,
        as evaluate runs it) or ``...-tf32`` when TF32 is on while the key is taken."""
        param = next(self.module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        if device.type != "cuda":
            return f"{device.type}-fp32"
        tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
        return f"cuda-{torch.cuda.get_device_name(device).replace(' ', '_')}-{'tf32' if tf32 else 'fp32'}"

    @torch.no_grad()
    def extract(self, images_uint8: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 ``[B,3,H,W]`` (or ``[B,H,W,3]`` numpy-style, channels last) -> float32 ``[B,D]`` on CPU."""
        x = torch.as_tensor(images_uint8)
        if x.dtype != torch.uint8:
            raise TypeError(f"feature extractors take uint8 images, got {x.dtype}")
        if x.dim() == 4 and x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
        x = x.contiguous().to(device)
        return self.module(x).float().reshape(x.shape[0], -1).cpu()


# --------------------------------------------------------------------------------------------
# tiny


class TinyFeatureExtractor(nn.Module):
    """A seeded 5-layer CNN: uint8 ``[B,3,H,W]`` -> ``[B,dim]`` (mean and std of the last map).

    Inputs are resized to 64x64 (bilinear, antialiased) so the feature space does not depend on
    the image resolution. Weights are He-normal draws from a private generator seeded with
    ``seed``: the same on every machine with the same torch version, and recorded by sha256.
    """

    def __init__(self, dim: int = 256, seed: int = TINY_SEED):
        super().__init__()
        if dim < 8 or dim % 2:
            raise ValueError(f"tiny feature dimension must be an even number >= 8, got {dim}")
        self.num_features = dim
        self.seed = seed
        chans = [3, 32, 64, 128, 256, dim // 2]
        strides = [2, 2, 2, 1, 1]
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, 3, stride=s, padding=1)
            for cin, cout, s in zip(chans[:-1], chans[1:], strides, strict=True)
        )
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for conv in cast(Iterable[nn.Conv2d], self.convs):  # ModuleList of Conv2d, built above
                fan_in = conv.in_channels * 9
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                assert conv.bias is not None  # built with the default bias=True
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TinyFeatureExtractor:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 127.5 - 1.0
        if x.shape[-2:] != (TINY_INPUT_SIZE, TINY_INPUT_SIZE):
            x = F.interpolate(
                x, size=(TINY_INPUT_SIZE, TINY_INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True
            )
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.relu(x)
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)

    def weights_sha256(self) -> str:
        h = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def tiny_backbone(dim: int = 256, seed: int = TINY_SEED) -> FeatureBackbone:
    net = TinyFeatureExtractor(dim, seed)
    info = {
        "name": f"tiny-cnn-seed{seed}-d{dim}",
        "paper_comparable": False,
        "feature_dim": dim,
        "weights_file": None,
        "weights_sha256": net.weights_sha256(),
        "resize": f"bilinear-antialias-{TINY_INPUT_SIZE}",
    }
    return FeatureBackbone(net, info)


# --------------------------------------------------------------------------------------------
# inception


def missing_inception_message(explicit: str | Path | None = None, weights_dir: Path | None = None) -> str:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    lines = []
    if explicit:
        lines.append(f"evaluate.inception_weights points to {explicit}, which does not exist.")
    else:
        lines.append(
            "FID/KID with evaluate.feature_extractor: inception needs the FID Inception weights, and none were found."
        )
    lines += [
        f"Provide the file {INCEPTION_FILENAMES[0]} (torch-fidelity's name) or {INCEPTION_FILENAMES[1]}",
        "(pytorch-fid's name; the same weights), either by placing it in the project's weights folder",
        f"  {weights_dir or 'weights'}/  (a DVC dependency of the evaluate stage: a new file reruns it)",
        f"or in the torch hub cache {hub}/ (set TORCH_HOME to move it; not tracked by DVC),",
        "or by setting evaluate.inception_weights: /path/to/the/file in params.yaml.",
        f"On a machine with internet, evaluate.allow_download: true fetches it from {INCEPTION_URL}.",
        "To evaluate without it (numbers NOT comparable with published FIDs), set evaluate.feature_extractor: tiny.",
    ]
    return "\n".join(lines)


def resolve_inception_weights(
    explicit: str | Path | None = None, allow_download: bool = False, weights_dir: Path | None = None
) -> Path:
    """An explicit path, else the file in ``weights_dir``, else in the torch hub cache, else a download if allowed."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FeatureWeightsError(missing_inception_message(explicit, weights_dir))
        return path
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for folder in (weights_dir, hub):
        for name in INCEPTION_FILENAMES:
            if folder is not None and (folder / name).is_file():
                if folder == hub and weights_dir is not None:
                    log.warning(
                        "the Inception weights come from the torch hub cache (%s), which DVC does not track: copy the "
                        "file to %s/ so that a different file reruns the evaluate stage",
                        hub / name,
                        weights_dir,
                    )
                return folder / name
    if allow_download:
        hub.mkdir(parents=True, exist_ok=True)
        target = hub / INCEPTION_FILENAMES[0]
        try:
            torch.hub.download_url_to_file(
                INCEPTION_URL, str(target), hash_prefix=INCEPTION_SHA256_PREFIX, progress=False
            )
        except Exception as err:  # noqa: BLE001 - any network failure becomes the same clear message
            raise FeatureWeightsError(
                f"downloading {INCEPTION_URL} failed: {err}\n" + missing_inception_message(None, weights_dir)
            ) from err
        return target
    raise FeatureWeightsError(missing_inception_message(None, weights_dir))


_INCEPTION_PROBE_KEYS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
}


def check_inception_state_dict(path: Path) -> None:
    """Open the file with ``weights_only=True`` and check it is the FID Inception's state dict.

    torch-fidelity later re-reads it with the full unpickler; a file that passes the restricted
    unpickler holds only tensors and plain containers, so that second read runs no code.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise FeatureWeightsError(f"{path}: not a plain PyTorch weights file ({err})") from err
    if not isinstance(state, dict):
        raise FeatureWeightsError(f"{path}: expected a state dict, got {type(state).__name__}")
    for key, shape in _INCEPTION_PROBE_KEYS.items():
        if key not in state or tuple(state[key].shape) != shape:
            raise FeatureWeightsError(
                f"{path}: not the FID Inception (TF 2015-12-05 port) state dict: key {key} with shape {shape} "
                "is missing. "
                f"Expected {INCEPTION_FILENAMES[0]} or {INCEPTION_FILENAMES[1]}."
            )


def inception_backbone(
    weights: str | Path | None = None,
    allow_download: bool = False,
    feature_dim: int = 2048,
    weights_dir: Path | None = None,
) -> FeatureBackbone:
    """torchmetrics' NoTrainInceptionV3 with the TF1 resize (``antialias=False``)."""
    if feature_dim not in INCEPTION_FEATURE_DIMS:
        raise ValueError(f"Inception feature layer must be one of {INCEPTION_FEATURE_DIMS}, got {feature_dim}")
    path = resolve_inception_weights(weights, allow_download, weights_dir)
    check_inception_state_dict(path)
    from torchmetrics.image.fid import NoTrainInceptionV3

    net = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=[str(feature_dim)],
        feature_extractor_weights_path=str(path),
        antialias=False,
    )
    net.num_features = feature_dim
    sha = sha256_file(path)
    real = sha == INCEPTION_SHA256
    # The name identifies the feature space (the registry compares only numbers of the same name):
    # another weights file or another layer is another space.
    name = "inception-v3-tf-2015-12-05" if real else f"inception-v3-arch-other-weights-{sha[:8]}"
    if feature_dim != 2048:
        name += f"-pool{feature_dim}"
    info = {
        "name": name,
        "paper_comparable": real and feature_dim == 2048,
        "feature_dim": feature_dim,
        "weights_file": str(path),
        "weights_sha256": sha,
        "resize": "tf1-bilinear-299",
    }
    return FeatureBackbone(net, info)


def build_backbone(
    kind: str,
    *,
    inception_weights: str | Path | None = None,
    allow_download: bool = False,
    inception_feature_dim: int = 2048,
    tiny_dim: int = 256,
    weights_dir: Path | None = None,
) -> FeatureBackbone:
    if kind == "inception":
        return inception_backbone(inception_weights, allow_download, inception_feature_dim, weights_dir)
    if kind == "tiny":
        return tiny_backbone(tiny_dim)
    raise ValueError(f"unknown feature extractor {kind!r}; use 'inception' or 'tiny'")


# --------------------------------------------------------------------------------------------
# surrogate weights for tests and benchmarks


def _calibration_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random colour fields plus rectangles: uint8 ``[n,3,size,size]``, image-like statistics."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    for i in range(n):
        for _ in range(4):
            y0, x0 = torch.randint(0, size - 8, (2,), generator=g).tolist()
            h, w = torch.randint(8, size // 2, (2,), generator=g).tolist()
            img[i, :, y0 : y0 + h, x0 : x0 + w] = torch.rand(3, 1, 1, generator=g)
    img = img + 0.05 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def write_surrogate_inception_weights(path: Path | str, seed: int = 0, calibration_images: int = 12) -> Path:
    """Write a NON-real weights file for the FID Inception architecture (tests, benchmarks).

    A plain random init gives degenerate features (every image maps to almost the same vector).
    Here convolutions are He-normal draws from a seeded generator and every batch norm is then
    calibrated on synthetic images (its running statistics set to the batch statistics of its own
    input), so each layer's output has unit scale and the 2048-d features differ between images.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3
    from torchvision.models import inception_v3

    path = Path(path)
    gen = torch.Generator().manual_seed(seed)
    template = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    state = {}
    for key, value in template.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)
        elif value.dim() == 4:  # conv weight
            fan_in = value.shape[1] * value.shape[2] * value.shape[3]
            state[key] = torch.randn(value.shape, generator=gen) * math.sqrt(2.0 / fan_in)
        elif key == "fc.weight":
            state[key] = torch.randn(value.shape, generator=gen) / math.sqrt(value.shape[1])
        elif key.endswith("running_var") or key.endswith(".bn.weight"):
            state[key] = torch.ones_like(value)
        else:  # bn bias, running_mean, fc bias
            state[key] = torch.zeros_like(value)

    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(tmp), antialias=False
        )
        # Calibrate: in train mode each BN normalises by its batch statistics and (momentum=None)
        # records their cumulative average as running statistics. NoTrainInceptionV3.train() is
        # pinned to eval, so switch the BN layers directly.
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.training = True
        images = _calibration_images(calibration_images, 64, seed + 1)
        with torch.no_grad():
            for start in range(0, calibration_images, 4):
                net(images[start : start + 4])
        for bn in bns:
            bn.training = False
        calibrated = {k: v.detach().clone() for k, v in net.state_dict().items()}
        state.update({k: calibrated[k] for k in state if k in calibrated})
        torch.save(state, tmp)
    return path


# --------------------------------------------------------------------------------------------
# cache of real-image features


def resize_identity() -> str:
    """A digest of the code that resizes real images (``gaugan.transforms.resize_image``): part of the cache key."""
    import inspect

    from gaugan.transforms import resize_image

    return digest(inspect.getsource(resize_image), 12)


class RealFeatureCache:
    """Real-image features of a split, keyed by what determines them: dataset id, backbone, size, image count."""

    def __init__(self, directory: Path | None, key_parts: dict):
        self.key_parts = json.loads(json.dumps(key_parts))  # as it reads back from the file
        self.path = directory / f"real-features-{digest(key_parts, 24)}.pt" if directory is not None else None

    def load(self, ids: list[str]) -> torch.Tensor | None:
        """The cached features of exactly these image ids, or None."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a broken cache entry is recomputed
            return None
        if obj.get("key") != self.key_parts or list(obj["ids"]) != ids:
            return None
        return obj["features"]

    def save(self, ids: list[str], features: torch.Tensor) -> None:
        if self.path is None:
            return
        with atomic_path(self.path) as tmp:
            torch.save({"ids": ids, "key": self.key_parts, "features": features.contiguous()}, tmp)
