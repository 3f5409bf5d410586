"""Typed, validated view of ``params.yaml``.

Every stage calls :func:`load_params` first, so an unknown key or a bad value fails at start-up
with the key's dotted path, never an hour into training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ParamsError(ValueError):
    """A problem with params.yaml: the message names the file, the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DatasetFormat = Literal["demo", "coco-stuff", "ade20k", "ade20k-full", "spade", "folder"]


class DemoDataSettings(_Section):
    """Size of the procedurally generated landscape dataset."""

    num_train: int = Field(240, ge=1)
    num_val: int = Field(48, ge=1)
    width: int = Field(64, ge=16)
    height: int = Field(64, ge=16)
    seed: int = 0


class DataSettings(_Section):
    format: DatasetFormat = "demo"
    source: str = "data/raw"
    out: str = "data/prepared"
    workers: int = Field(1, ge=1)
    on_error: Literal["fail", "skip"] = "fail"
    demo: DemoDataSettings = DemoDataSettings()
    # COCO-Stuff: what crowd annotations become in the instance map ("ignore": no instance id,
    # as the reference implementation does; "instance": they get an id like any other annotation).
    coco_crowd: Literal["ignore", "instance"] = "ignore"
    # ADE20K-full: resize so the short side is this many pixels (only ever down, NEAREST for maps).
    ade20k_short_side: int = Field(512, ge=16)
    # COCO-Stuff / ADE20K instance maps: pixels outside every object get one id per label value
    # ("per_class", so edges also mark stuff boundaries, as the reference's COCO maps do) or stay 0.
    instance_background: Literal["per_class", "none"] = "per_class"


class ModelSettings(_Section):
    """Architecture; the names follow the reference implementation's options."""

    ngf: int = Field(64, ge=1)
    ndf: int = Field(64, ge=1)
    nef: int = Field(64, ge=1)
    z_dim: int = Field(256, ge=1)
    spade_hidden: int = Field(128, ge=1)
    use_vae: bool = False
    use_instance: bool = True
    num_upsampling_layers: Literal["normal", "more", "most"] = "normal"
    norm_G: str = "spectralspadesyncbatch3x3"
    norm_D: str = "spectralinstance"
    norm_E: str = "spectralinstance"
    num_D: int = Field(2, ge=1)
    n_layers_D: int = Field(4, ge=1)
    label_nc: int | None = Field(None, ge=1, description="null: taken from classes.json")


class TrainSettings(_Section):
    nproc: int = Field(1, ge=1, description="processes per machine for torchrun")
    batch_size: int = Field(8, ge=1, description="global batch, split over all processes")
    max_steps: int = Field(1000, ge=1)
    decay_start_step: int | None = Field(
        None, ge=0, description="linear lr decay from here to max_steps; null: no decay"
    )
    lr: float = Field(0.0002, gt=0)
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.9, ge=0, lt=1)
    ttur: bool = True
    gan_mode: Literal["hinge"] = "hinge"
    lambda_feat: float = Field(10.0, ge=0)
    lambda_vgg: float = Field(10.0, ge=0)
    lambda_kld: float = Field(0.05, ge=0)
    vgg_weights: str | None = Field(
        None, description="path to torchvision vgg19 weights; null: standard torch hub cache"
    )
    load_size: int = Field(72, ge=8)
    crop_size: int = Field(64, ge=8)
    aspect_ratio: float = Field(1.0, gt=0)
    flip: bool = True
    ema: bool = True
    ema_decay: float = Field(0.999, gt=0, lt=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(2, ge=0)
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(200, ge=1)
    checkpoint_dir: str = "runs/train"
    out_dir: str = "outputs/train"
    model_out: str = "models/generator.pt"

    @model_validator(mode="after")
    def _crop_fits(self) -> TrainSettings:
        if self.crop_size > self.load_size:
            raise ValueError(
                f"train.crop_size ({self.crop_size}) is larger than train.load_size ({self.load_size}); "
                "set crop_size <= load_size"
            )
        return self


class SegmenterSettings(_Section):
    """The segmentation network that scores generated images (mIoU, pixel accuracy)."""

    arch: Literal[
        "unet-small", "fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"
    ] = "unet-small"
    weights: str | None = Field(
        None,
        description="weights file to start from (torchvision state dict or segmenter file); required for the torchvision "
        "archs; null: unet-small is trained from scratch",
    )
    width: int = Field(
        16, ge=4, description="unet-small channels at full resolution (16: ~0.3 s/step at 64 px, batch 16, 2 CPU cores)"
    )
    steps: int = Field(600, ge=0, description="training (or fine-tuning) steps; 0: only package segmenter.weights")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(0.001, gt=0)
    num_workers: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out: str = "models/segmenter.pt"
    metrics: str = Field("outputs/segmenter/metrics.json", description="train loss and real-validation mIoU")


class EvaluateSettings(_Section):
    feature_extractor: Literal["inception", "tiny"] = Field(
        "inception",
        description="inception: paper-comparable FID (needs the weights file); tiny: seeded small CNN, offline",
    )
    inception_weights: str | None = Field(
        None,
        description="weights-inception-2015-12-05-6726825d.pth / pt_inception-2015-12-05-6726825d.pth; "
        "null: $TORCH_HOME/hub/checkpoints/",
    )
    allow_download: bool = Field(
        False, description="download the Inception weights into the torch hub cache when missing"
    )
    inception_feature_dim: Literal[64, 192, 768, 2048] = Field(2048, description="2048 for FID as published")
    tiny_feature_dim: int = Field(256, ge=8)
    kid_subset_size: int = Field(50, ge=2, description="capped at the number of images")
    kid_subsets: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1)
    max_images: int | None = Field(None, ge=1, description="null: the whole validation split")
    ignore_classes: list[int] | None = Field(
        None,
        description="classes left out of mIoU/accuracy; null: classes.json 'ignore', else the dataset's standard (ADE20K: [0])",
    )
    vae_style: Literal["real", "random"] = Field(
        "real",
        description="models with a style encoder: encode the real image (reference protocol) or draw z at random",
    )
    num_samples: int = Field(8, ge=1, description="rows in samples.png")
    stats_cache: str | None = Field(".cache/evaluate", description="cache of real-image features; null: off")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out_dir: str = "outputs/evaluate"

    @model_validator(mode="after")
    def _tiny_dim_even(self) -> EvaluateSettings:
        if self.tiny_feature_dim % 2:
            raise ValueError(
                f"evaluate.tiny_feature_dim must be even (mean and std halves), got {self.tiny_feature_dim}"
            )
        return self


class RegisterSettings(_Section):
    model_name: str | None = Field(None, description="null: gaugan-<dataset>")
    metric: str = "fid"
    greater_is_better: bool = False
    promote: Literal["if_better", "always", "never"] = Field(
        "if_better",
        description="if_better: @champion moves only to a version that beats it on `metric` (FID/KID computed with "
        "another backbone or resolution do not compare: the champion stays); always / never: regardless",
    )
    out: str = "outputs/register/registration.json"


class MlflowSettings(_Section):
    tracking_uri: str | None = Field(None, description="null: MLFLOW_TRACKING_URI, else sqlite at <repo>/mlflow.db")
    experiment: str | None = Field(None, description="null: gaugan-<dataset>")


class Params(_Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    seed: int = 0
    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    segmenter: SegmenterSettings = SegmenterSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    # "register" would shadow a BaseModel attribute, so the field is named registry in code.
    registry: RegisterSettings = Field(RegisterSettings(), alias="register")
    mlflow: MlflowSettings = MlflowSettings()


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key; remove it or check its spelling")
        else:
            lines.append(f"  - {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_params(raw: dict, source: Path | str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_format_errors(Path(source), err)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found; run from the project root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, path)
