"""What the evaluate stage works with, loaded and checked before any image is synthesized.

The validation split, the generator, the segmenter and the FID/KID feature extractor must agree:
the same classes, at least two images. Anything that does not fits fails here, naming both sides.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gaugan.classes import DONTCARE, ClassTable
from gaugan.config import size_hw
from gaugan.data import PreparedDataset, dataset_id, split_size, val_split_id
from gaugan.numerics import auto_precision
from gaugan.synthesizer import Synthesizer
from pipeline.distributed import pick_device
from pipeline.errors import EvaluationError, MissingInputError
from pipeline.evaluation.comparable import style_source
from pipeline.evaluation.diversity import LpipsDiversity
from pipeline.evaluation.features import FeatureBackbone, build_backbone
from pipeline.evaluation.segmenter import Segmenter, load_segmenter
from pipeline.params import Params

WEIGHTS_DIR = "weights"  # the project's folder for weights files (a DVC dependency of evaluate and train-segmenter)

log = logging.getLogger(__name__)


@dataclass
class EvaluationInputs:
    classes: ClassTable
    dataset_id: str
    split_id: str  # the validation split's identity (gaugan.data.val_split_id)
    val: PreparedDataset
    num_images: int
    hw: tuple[int, int]  # the generator's output size: evaluation runs at it
    ignore: list[int]
    synth: Synthesizer
    segmenter: Segmenter
    backbone: FeatureBackbone
    device: torch.device
    generator_path: Path
    segmenter_path: Path
    split_size: int  # validation images in the prepared dataset
    style_source: str  # none | random | encoded-real (comparable.style_source)
    precision: dict  # what ran in which precision (recorded: GPU and CPU numbers differ slightly)
    diversity: LpipsDiversity | None  # LPIPS diversity (models with a style encoder, when set)


def load_inputs(params: Params, root: Path, generator: Path | None = None) -> EvaluationInputs:
    """``generator``: score that file instead of ``train.model_out`` (the registry scoring the champion
    again on today's split); its class table may then be the start of today's (a model trained before
    classes were appended): the caller checks that the validation maps use only its classes."""
    e = params.evaluate
    data_root = root / params.data.out
    classes = ClassTable.load(data_root)
    device = pick_device(e.device, key="evaluate.device")
    n = count_images(data_root, e.max_images)
    backbone = build_backbone(
        e.feature_extractor,
        inception_weights=_under(root, e.inception_weights),
        allow_download=e.allow_download,
        inception_feature_dim=e.inception_feature_dim,
        tiny_dim=e.tiny_feature_dim,
        weights_dir=root / WEIGHTS_DIR,
    )
    backbone.module.to(device)
    identity = dataset_id(data_root)
    gen_path, seg_path = generator or root / params.train.model_out, root / params.segmenter.out
    synth = load_generator_checked(gen_path, classes, data_root, device, older=True)
    check_older_generator(synth, classes, data_root, n, gen_path)
    segmenter = load_segmenter_checked(seg_path, classes, data_root, identity, device)
    use_vae = bool(synth.config.use_vae)
    diversity = LpipsDiversity(e.diversity_net, device) if use_vae and e.diversity_net else None
    return EvaluationInputs(
        classes=classes,
        dataset_id=identity,
        split_id=val_split_id(data_root),
        val=PreparedDataset(data_root, "val", load_instances=synth.config.use_instance),
        num_images=n,
        hw=size_hw(synth.config.crop_size, synth.config.aspect_ratio),
        ignore=scored_ignore(classes.ignored(e.ignore_classes), segmenter),
        synth=synth,
        segmenter=segmenter,
        backbone=backbone,
        device=device,
        generator_path=gen_path,
        segmenter_path=seg_path,
        split_size=split_size(data_root, "val"),
        style_source=style_source(use_vae, e.vae_style),
        precision=precision_record(device),
        diversity=diversity,
    )


@contextmanager
def full_float32() -> Iterator[None]:
    """TF32 off for matmuls and convolutions while evaluating (cuDNN allows it by default), then restored."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def scored_ignore(ignore: list[int], segmenter: Segmenter) -> list[int]:
    """The dataset's ignored classes plus those the segmenter cannot predict (no output maps to them)."""
    unreachable = set(range(segmenter.num_classes)) - segmenter.reachable()
    return sorted(set(ignore) | unreachable)


def precision_record(device: torch.device) -> dict:
    """Device and numeric modes of each part: the generator autocasts on GPU (native bf16, else fp16)."""
    cuda = device.type == "cuda"
    generator = "fp32" if not cuda else f"{auto_precision(device)}-autocast"
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "generator": generator,
        "features": "fp32",
        "segmenter": "fp32",
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else False,
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32) if cuda else False,
        "torch": torch.__version__,
    }


def _under(root: Path, path: str | None) -> str | None:
    """A path from params.yaml: relative ones are relative to the project root."""
    return str(root / path) if path and not Path(path).is_absolute() else path


def count_images(data_root: Path, max_images: int | None) -> int:
    """How many validation images to evaluate; FID and KID need at least two."""
    available = split_size(data_root, "val")
    n = available if max_images is None else min(available, max_images)
    if n == 0:
        raise EvaluationError(
            f"{data_root}: the validation split is empty; there is nothing to evaluate. FID, KID and mIoU are "
            "computed on the 'val' split: check the ingest stage's split (manifest.parquet)"
        )
    if n < 2:
        raise EvaluationError(f"{data_root}: FID and KID need at least 2 validation images, the split has {n}")
    return n


def check_same_classes(
    model: ClassTable | None, data: ClassTable, what: str, model_path: Path, data_root: Path
) -> None:
    """Refuse a model whose class table disagrees with the dataset's classes.json."""
    if model is None:
        raise EvaluationError(
            f"{what} {model_path} records no class table; it cannot be checked against {data_root}/classes.json"
        )
    problems = model.differences(data)
    if problems:
        raise EvaluationError(
            f"the {what} {model_path} was trained on other classes than the dataset at {data_root}: "
            f"{problems[0]} ({what} vs dataset).\n  {what}: {model.describe()}\n  dataset: {data.describe()}\n"
            "Evaluate it on the dataset it was trained on, or retrain it on this one."
        )


def load_generator_checked(
    path: Path, classes: ClassTable, data_root: Path, device: torch.device, older: bool = False
) -> Synthesizer:
    """``older``: a class table that is the start of the dataset's (classes appended since) is accepted."""
    if not path.is_file():
        raise MissingInputError(f"{path}: no generator; run the train stage first (or set train.model_out)")
    synth = Synthesizer.from_checkpoint(path, device=str(device))
    own = synth.classes
    if not (older and own is not None and own.names == classes.names[: own.label_nc]):
        check_same_classes(own, classes, "generator", path, data_root)
    return synth


def check_older_generator(synth: Synthesizer, classes: ClassTable, data_root: Path, n: int, path: Path) -> None:
    """A generator trained before classes were appended scores today's split only when the maps it
    synthesizes use just its classes."""
    own = synth.classes
    if own is None or own.label_nc >= classes.label_nc:
        return
    beyond = classes_beyond(data_root, own.label_nc, n)
    if beyond:
        listed = ", ".join(f"{c} {classes.names[c]!r} ({k} maps)" for c, k in beyond.items())
        raise EvaluationError(
            f"the generator {path} has {own.label_nc} classes, the first {own.label_nc} of {data_root}'s "
            f"{classes.label_nc}, but validation maps use later ones: {listed}. It cannot synthesize them; "
            "evaluate a model trained on this dataset"
        )


def classes_beyond(data_root: Path, label_nc: int, num_images: int) -> dict[int, int]:
    """Classes at or above ``label_nc`` in the first ``num_images`` validation label maps -> images using them."""
    from gaugan.data import PreparedDataset

    found: dict[int, int] = {}
    val = PreparedDataset(data_root, "val", load_instances=False)
    for index in range(min(num_images, len(val))):
        with Image.open(io.BytesIO(val.member_bytes(index)["label"] or b"")) as im:
            values = np.unique(np.asarray(im))
        for c in values[(values >= label_nc) & (values != DONTCARE)].tolist():
            found[int(c)] = found.get(int(c), 0) + 1
    return dict(sorted(found.items()))


def load_segmenter_checked(
    path: Path, classes: ClassTable, data_root: Path, identity: str, device: torch.device
) -> Segmenter:
    segmenter = load_segmenter(path, device)
    check_same_classes(segmenter.classes, classes, "segmenter", path, data_root)
    if segmenter.meta.get("dataset_id") != identity:
        log.warning(
            "the segmenter %s was trained on another version of the dataset (%s, now %s)",
            path,
            segmenter.meta.get("dataset_id"),
            identity,
        )
    return segmenter
