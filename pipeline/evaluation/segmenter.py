"""Segmentation networks that score generated images (mIoU, pixel accuracy), and the train-segmenter stage.

Architectures:

- ``unet-small``: a small in-repo UNet (``segmenter.width`` channels at full resolution, doubled
  at each of three downsamplings), trained here from scratch on the real training images of the
  prepared dataset. No download, no torchvision.
- ``fcn_resnet50``, ``deeplabv3_resnet50``, ``deeplabv3_mobilenet_v3_large``,
  ``lraspp_mobilenet_v3_large``: torchvision models built without any download and loaded from a
  weights file (``segmenter.weights``). A file whose classifier has another number of classes
  keeps its backbone and gets a new head, fine-tuned for ``segmenter.steps`` steps.

The segmenter file (``segmenter.out``) is a plain dict saved with ``torch.save`` and read back with
``weights_only=True``: format tag, arch, number of classes, width, state dict, input size, the
dataset's name/classes/fingerprint, the ignored classes, and the training metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.distributed import pick_device
from pipeline.evaluation.dataset import (
    DONTCARE,
    class_names,
    dataset_fingerprint,
    eval_hw,
    ignore_classes,
    read_classes_json,
    resize_image,
    resize_map,
    split_size,
)

FORMAT = "gaugan-segmenter"
FORMAT_VERSION = 1
TORCHVISION_ARCHS = (
    "fcn_resnet50",
    "deeplabv3_resnet50",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
)
ARCHS = ("unet-small",) + TORCHVISION_ARCHS
# torchvision's segmentation models were trained with ImageNet normalisation; the UNet uses it too.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class SegmenterError(ValueError):
    """A segmenter problem whose message says what to change."""


# --------------------------------------------------------------------------------------------
# networks


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNetSmall(nn.Module):
    """Three-level UNet: ``[B,3,H,W]`` normalised images -> ``[B,num_classes,H,W]`` logits (any H, W)."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        w = width
        self.enc1 = _double_conv(3, w)
        self.enc2 = _double_conv(w, 2 * w)
        self.enc3 = _double_conv(2 * w, 4 * w)
        self.mid = _double_conv(4 * w, 8 * w)
        self.up3 = nn.ConvTranspose2d(8 * w, 4 * w, 2, stride=2)
        self.dec3 = _double_conv(8 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _double_conv(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _double_conv(2 * w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        m = self.mid(F.max_pool2d(e3, 2))
        d3 = self.dec3(torch.cat([self.up3(m), e3], 1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)[..., :h, :w]


class _TorchvisionLogits(nn.Module):
    """torchvision segmentation models return ``{"out": logits, ...}``; keep only the logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def build_network(arch: str, num_classes: int, width: int = 32) -> nn.Module:
    """An untrained network; no download ever (torchvision models get ``weights=None``)."""
    if arch == "unet-small":
        return UNetSmall(num_classes, width)
    if arch in TORCHVISION_ARCHS:
        from torchvision.models import segmentation as tvseg

        kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
        if arch != "lraspp_mobilenet_v3_large":
            kwargs["aux_loss"] = False
        return _TorchvisionLogits(getattr(tvseg, arch)(**kwargs))
    raise SegmenterError(f"unknown segmenter.arch {arch!r}; choose one of {', '.join(ARCHS)}")


def _load_pretrained(net: nn.Module, arch: str, path: Path, num_classes: int) -> list[str]:
    """Load a weights file into ``net``; returns the keys left at their new initialisation (a new head).

    Accepts a segmenter file written by this module, or a bare state dict (torchvision's own
    files, e.g. ``deeplabv3_resnet50_coco-cd0a2569.pth``, keyed without the wrapper's ``net.``).
    Everything but a classifier head of another class count must match, so a wrong file is an
    error rather than silently random weights.
    """
    if not path.is_file():
        raise SegmenterError(
            f"segmenter.weights points to {path}, which does not exist. Give the path of a weights file for "
            f"segmenter.arch {arch!r} (a torchvision state dict or a segmenter file), or use arch unet-small "
            "with weights: null to train one here."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise SegmenterError(f"{path}: not a plain PyTorch weights file ({err})") from err
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj["arch"] != arch:
            raise SegmenterError(f"{path} holds a {obj['arch']!r} segmenter but segmenter.arch is {arch!r}")
        state = obj["state_dict"]
    elif isinstance(obj, dict):
        state = obj.get("state_dict", obj) if "state_dict" in obj and isinstance(obj["state_dict"], dict) else obj
    else:
        raise SegmenterError(f"{path}: expected a state dict, got {type(obj).__name__}")

    target = net.state_dict()
    if isinstance(net, _TorchvisionLogits) and not any(k.startswith("net.") for k in state):
        state = {f"net.{k}": v for k, v in state.items()}
    state = {k: v for k, v in state.items() if ".aux_classifier." not in k and not k.startswith("aux_classifier.")}
    head_prefixes = ("head.", "net.classifier.")
    fresh, problems = [], []
    loaded = {}
    for key, value in state.items():
        if key not in target:
            problems.append(f"unexpected key {key}")
        elif tuple(value.shape) != tuple(target[key].shape):
            if key.startswith(head_prefixes) and value.dim() >= 1 and target[key].shape[0] == num_classes:
                fresh.append(key)  # classifier of another class count: keep the new head
            else:
                problems.append(f"{key}: shape {tuple(value.shape)} in the file, {tuple(target[key].shape)} expected")
        else:
            loaded[key] = value
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    problems += [f"missing key {k}" for k in missing]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... ({len(problems)} problems)" if len(problems) > 6 else "")
        raise SegmenterError(f"{path} does not fit segmenter.arch {arch!r} with {num_classes} classes: {shown}")
    net.load_state_dict(loaded, strict=False)
    return fresh


# --------------------------------------------------------------------------------------------
# the segmenter object used by evaluation


@dataclass
class Segmenter:
    net: nn.Module
    arch: str
    num_classes: int
    meta: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def to(self, device: torch.device | str) -> Segmenter:
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std

    @torch.no_grad()
    def predict(self, images_uint8: torch.Tensor | np.ndarray, batch_size: int = 16) -> torch.Tensor:
        """uint8 images ``[B,H,W,3]`` (or ``[B,3,H,W]``) -> class indices ``[B,H,W]`` (int64, CPU)."""
        x = torch.as_tensor(images_uint8)
        if x.dtype != torch.uint8:
            raise TypeError(f"the segmenter takes uint8 images, got {x.dtype}")
        if x.dim() != 4:
            raise ValueError(f"expected a batch of images [B,H,W,3], got shape {tuple(x.shape)}")
        if x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
        self.net.eval()
        out = []
        use_amp = self.device.type == "cuda"
        for start in range(0, len(x), batch_size):
            chunk = self._normalise(x[start : start + batch_size].to(self.device))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = self.net(chunk)
            out.append(logits.float().argmax(1).cpu())
        return torch.cat(out) if out else torch.zeros((0, *x.shape[-2:]), dtype=torch.long)


def save_segmenter(path: Path, net: nn.Module, arch: str, num_classes: int, width: int, meta: dict) -> Path:
    from pipeline.io import atomic_path

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "num_classes": int(num_classes),
        "width": int(width),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **meta,
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_segmenter(path: Path | str, device: torch.device | str = "cpu") -> Segmenter:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no segmenter; run the train-segmenter stage first (gaugan-pipeline train-segmenter)"
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise SegmenterError(f"{path}: not a segmenter file written by train-segmenter")
    net = build_network(obj["arch"], obj["num_classes"], obj.get("width", 32))
    net.load_state_dict(obj["state_dict"])
    net.eval()
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    return Segmenter(net, obj["arch"], int(obj["num_classes"]), meta).to(device)


# --------------------------------------------------------------------------------------------
# training data


class _SegTrainSet(torch.utils.data.Dataset):
    """Real training images at the evaluation size, with seeded scale-crop, flip and colour jitter.

    Keys are ``(position, index)``: the augmentation of a draw depends only on (seed, position),
    whatever the number of loader workers.
    """

    def __init__(self, dataset, hw: tuple[int, int], ignore: Sequence[int], seed: int):
        self.dataset = dataset
        self.hw = hw
        self.ignore = np.asarray(list(ignore), dtype=np.int64)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        position, index = key
        item = self.dataset[int(index)]
        image = resize_image(item["image"], self.hw)
        label = resize_map(item["label"], self.hw)
        if self.ignore.size:
            label = np.where(np.isin(label, self.ignore), DONTCARE, label)
        rng = np.random.default_rng([self.seed, int(position)])
        h, w = self.hw
        scale = rng.uniform(0.6, 1.0)
        ch, cw = max(8, round(h * scale)), max(8, round(w * scale))
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        image = resize_image(image[y0 : y0 + ch, x0 : x0 + cw], self.hw)
        label = resize_map(label[y0 : y0 + ch, x0 : x0 + cw], self.hw)
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        img = torch.tensor(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        # brightness and contrast jitter: generated images are not colour-exact copies of real ones
        gain, bias = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
        mean = img.mean()
        img = ((img - mean) * gain + mean + bias).clamp(0, 255).round().to(torch.uint8)
        return img, torch.tensor(np.ascontiguousarray(label))


def _device(setting: str) -> torch.device:
    try:
        return pick_device(setting, key="segmenter.device")
    except RuntimeError as err:
        raise SegmenterError(str(err)) from None


def score_on_split(
    segmenter: Segmenter,
    dataset,
    hw: tuple[int, int],
    ignore: Sequence[int],
    batch_size: int = 16,
    limit: int | None = None,
):
    """Confusion-matrix scores of ``segmenter`` on the real images of a split (the mIoU ceiling)."""
    from pipeline.evaluation.metrics import ConfusionAccumulator

    acc = ConfusionAccumulator(segmenter.num_classes, ignore)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        images = np.stack([resize_image(it["image"], hw) for it in items])
        labels = np.stack([resize_map(it["label"], hw) for it in items])
        acc.update(segmenter.predict(images, batch_size), labels)
    return acc.scores() if acc.updates else None


# --------------------------------------------------------------------------------------------
# the stage


def run_train_segmenter(params, root: Path | str = Path(".")) -> Path:
    """Train (or load and package) the segmenter; writes ``segmenter.out`` and ``segmenter.metrics``."""
    from tqdm import tqdm

    from gaugan.data import PreparedDataset
    from pipeline.io import atomic_write_json

    s = params.segmenter
    root = Path(root)
    data_root = root / params.data.out
    classes = read_classes_json(data_root)
    num_classes = int(classes["label_nc"])
    ignore = ignore_classes(classes)  # classes.json-driven; evaluate.ignore_classes only changes scoring
    hw = eval_hw(params.train.crop_size, params.train.aspect_ratio)
    device = _device(s.device)

    torch.manual_seed(params.seed)  # initial weights (and a new head) depend on the seed only
    net = build_network(s.arch, num_classes, s.width)
    fresh: list[str] = []
    if s.weights:
        fresh = _load_pretrained(
            net, s.arch, Path(s.weights) if Path(s.weights).is_absolute() else root / s.weights, num_classes
        )
        if fresh and s.steps == 0:
            raise SegmenterError(
                f"{s.weights} predicts another number of classes than the dataset's {num_classes}; its classifier "
                "head was replaced by an untrained one. Set segmenter.steps > 0 to fine-tune it on the training images."
            )
    elif s.arch in TORCHVISION_ARCHS:
        raise SegmenterError(
            f"segmenter.arch {s.arch!r} is loaded from a weights file, and segmenter.weights is null. Set "
            "segmenter.weights: /path/to/the/state_dict.pth (a torchvision segmentation state dict, e.g. from the "
            f"torch hub cache {torch.hub.get_dir()}/checkpoints/), or use segmenter.arch: unet-small, which is trained "
            "here from scratch."
        )
    elif s.steps == 0:
        raise SegmenterError("segmenter.steps is 0 and there are no segmenter.weights: nothing would be learnt")

    n_train = split_size(data_root, "train")
    if n_train == 0 and s.steps > 0:
        raise SegmenterError(f"{data_root}: the train split is empty; the segmenter trains on the real training images")
    train_set = PreparedDataset(data_root, "train", load_instances=False) if n_train else []

    net.to(device)
    losses: list[float] = []
    started = time.perf_counter()
    if s.steps > 0:
        gen = torch.Generator().manual_seed(params.seed)
        draws = torch.randint(len(train_set), (s.steps * s.batch_size,), generator=gen).tolist()
        keys = list(enumerate(draws))
        loader = torch.utils.data.DataLoader(
            _SegTrainSet(train_set, hw, ignore, params.seed),
            batch_size=s.batch_size,
            sampler=keys,
            num_workers=s.num_workers,
            drop_last=False,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        opt = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: (1 - step / s.steps) ** 0.9)
        seg = Segmenter(net, s.arch, num_classes, device=device)
        net.train()
        use_amp = device.type == "cuda"
        progress = tqdm(total=s.steps, desc="train-segmenter", unit="step", dynamic_ncols=True, disable=None)
        try:
            for images, labels in loader:
                images = seg._normalise(images.to(device, non_blocking=True))
                labels = labels.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = net(images)
                loss = F.cross_entropy(logits.float(), labels, ignore_index=DONTCARE)
                if not torch.isfinite(loss):
                    if (labels == DONTCARE).all():
                        continue  # a batch with no labelled pixel carries no signal
                    raise SegmenterError(f"segmenter loss is {loss.item()} at step {len(losses)}; lower segmenter.lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                progress.update(1)
                progress.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        finally:
            progress.close()
    train_seconds = time.perf_counter() - started
    net.eval()

    segmenter = Segmenter(net, s.arch, num_classes, device=device)
    val_set = PreparedDataset(data_root, "val", load_instances=False) if split_size(data_root, "val") else []
    scores = score_on_split(segmenter, val_set, hw, ignore, batch_size=max(1, s.batch_size)) if len(val_set) else None
    tail = losses[-max(1, len(losses) // 10) :] if losses else []
    metrics = {
        "train_loss": float(np.mean(tail)) if tail else None,
        "steps": len(losses),
        "train_seconds": round(train_seconds, 2),
        "num_train_images": len(train_set),
        "num_val_images": len(val_set),
        "miou_real_val": scores.miou if scores else None,
        "accuracy_real_val": scores.accuracy if scores else None,
        "fresh_head_keys": len(fresh),
    }
    names = class_names(classes)
    meta = {
        "input_hw": list(hw),
        "normalize": {"mean": list(MEAN), "std": list(STD)},
        "dataset": {
            "name": str(classes.get("dataset", "")),
            "label_nc": num_classes,
            "names": names,
            "fingerprint": dataset_fingerprint(data_root),
        },
        "ignore": ignore,
        "seed": int(params.seed),
        "pretrained_from": str(s.weights) if s.weights else None,
        "metrics": {k: v for k, v in metrics.items() if v is not None},
    }
    out = root / s.out
    save_segmenter(out, net, s.arch, num_classes, s.width, meta)
    metrics_path = root / s.metrics
    atomic_write_json(
        metrics_path, {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    )
    return out
