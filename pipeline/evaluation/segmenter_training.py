"""Training the segmenter: its starting weights, its training images, its optimisation loop.

The train-segmenter stage (``pipeline/stages/train_segmenter.py``) uses these. The segmenter
learns from the real training images at the evaluation size, with seeded scale-crop, flip and
colour jitter; a file whose classifier has another number of classes keeps its backbone and gets a
new head, fine-tuned for ``segmenter.steps`` steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gaugan.classes import DONTCARE
from gaugan.transforms import resize_image, resize_map
from pipeline.errors import SegmenterError
from pipeline.evaluation.segmentation_nets import TORCHVISION_ARCHS, TorchvisionLogits, build_network
from pipeline.evaluation.segmenter import FORMAT
from pipeline.evaluation.segmenter_spec import SegmenterSpec
from pipeline.logs import Progress
from pipeline.params import SegmenterSettings


def initial_network(s: SegmenterSettings, num_classes: int, root: Path) -> tuple[nn.Module, list[str]]:
    """The network to train: fresh (unet-small) or from ``segmenter.weights``; -> (net, keys of a new head).

    Its random initialisation comes from torch's global RNG: seed it first.
    """
    net = build_network(s.arch, num_classes, s.width)
    if s.weights:
        path = Path(s.weights) if Path(s.weights).is_absolute() else root / s.weights
        fresh = load_pretrained(net, s.arch, path, num_classes)
        if fresh and s.steps == 0:
            raise SegmenterError(
                f"{s.weights} predicts another number of classes than the dataset's {num_classes}; its classifier "
                "head was replaced by an untrained one. Set segmenter.steps > 0 to fine-tune it on the training images."
            )
        return net, fresh
    if s.arch in TORCHVISION_ARCHS:
        raise SegmenterError(
            f"segmenter.arch {s.arch!r} is loaded from a weights file, and segmenter.weights is null. Set "
            "segmenter.weights: /path/to/the/state_dict.pth (a torchvision segmentation state dict, e.g. from the "
            f"torch hub cache {torch.hub.get_dir()}/checkpoints/), or use segmenter.arch: unet-small, which is trained "
            "here from scratch."
        )
    if s.steps == 0:
        raise SegmenterError("segmenter.steps is 0 and there are no segmenter.weights: nothing would be learnt")
    return net, []


def load_pretrained(net: nn.Module, arch: str, path: Path, num_classes: int) -> list[str]:
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
    if isinstance(net, TorchvisionLogits) and not any(k.startswith("net.") for k in state):
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


def grow_into(net: nn.Module, state: dict, old_classes: int, num_classes: int) -> list[str]:
    """Load a segmenter's ``state`` of ``old_classes`` into ``net`` of ``num_classes`` (>= old): tensors
    whose first dimension is the class count keep their old rows, the rows of new classes keep
    ``net``'s initialisation; -> the keys that grew."""
    target = net.state_dict()
    grown, merged = [], {}
    for key, value in state.items():
        if key not in target:
            raise SegmenterError(f"the parent's segmenter has {key}, which this network has not")
        want = target[key]
        if tuple(value.shape) == tuple(want.shape):
            merged[key] = value
        elif value.dim() >= 1 and value.shape[0] == old_classes and want.shape[0] == num_classes:
            merged[key] = torch.cat([value, want[old_classes:]], 0)
            grown.append(key)
        else:
            raise SegmenterError(
                f"the parent's segmenter's {key} has shape {tuple(value.shape)}, not {tuple(want.shape)}"
            )
    net.load_state_dict(merged)
    return grown


class SegmenterTrainSet(torch.utils.data.Dataset):
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


def fit(
    net: nn.Module,
    train_set,
    s: SegmenterSettings,
    hw: tuple[int, int],
    ignore: Sequence[int],
    seed: int,
    device: torch.device,
    spec: SegmenterSpec,
) -> list[float]:
    """``segmenter.steps`` AdamW steps (polynomial decay) on seeded draws of ``train_set``; -> the losses."""
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(train_set), (s.steps * s.batch_size,), generator=gen).tolist()
    loader = torch.utils.data.DataLoader(
        SegmenterTrainSet(train_set, hw, ignore, seed),
        batch_size=s.batch_size,
        sampler=list(enumerate(draws)),
        num_workers=s.num_workers,
        drop_last=False,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    opt = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: (1 - step / s.steps) ** 0.9)
    net.train()
    losses: list[float] = []
    with Progress(s.steps, "train-segmenter", every=max(1, s.steps // 10)) as progress:
        for images, labels in loader:
            images = spec.normalise(images.to(device, non_blocking=True))
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
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
            progress.update(1, loss=losses[-1])
    net.eval()
    return losses
