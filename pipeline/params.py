"""Typed, validated view of ``params.yaml``: the one place settings come from.

The models below state types and bounds only; every value, default included, is written once, in
``params.yaml`` (with a comment). A missing key, an unknown key or a bad value fails at start-up
with the key's dotted path, never an hour into training.

Each stage reads only the keys its ``dvc.yaml`` entry lists: :func:`scoped` gives it a view of the
settings that refuses any other key (:class:`~pipeline.errors.UndeclaredParamError`), so DVC reruns
a stage exactly when a setting it reads has changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gaugan.choices import ClassRemap, PreprocessMode
from pipeline.errors import ParamsError, UndeclaredParamError

DatasetFormat = Literal["demo", "coco-stuff", "ade20k", "ade20k-full", "cityscapes", "spade", "folder"]
Device = Literal["auto", "cpu", "cuda"]
SegmenterArch = Literal[
    "unet-small",
    "fcn_resnet50",
    "deeplabv3_resnet50",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
    "torchscript",
    "onnx",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DemoDataSettings(_Section):
    num_train: int = Field(ge=1)
    num_val: int = Field(ge=1)
    width: int = Field(ge=16)
    height: int = Field(ge=16)
    seed: int


class DataSettings(_Section):
    format: DatasetFormat
    source: str
    classes: str | None = Field(min_length=1)
    out: str
    workers: int = Field(ge=1)
    on_error: Literal["fail", "skip"]
    shard_size_mb: float = Field(gt=0)
    compact_dead_fraction: float = Field(ge=0, le=1)
    dask_address: str | None = Field(min_length=1)
    coco_portraits: bool
    coco_crowd: Literal["ignore", "instance"]
    ade20k_short_side: int = Field(ge=16)
    instance_background: Literal["per_class", "none"]
    demo: DemoDataSettings


class ModelSettings(_Section):
    netG: Literal["spade", "pix2pixhd"]
    ngf: int = Field(ge=1)
    ndf: int = Field(ge=1)
    nef: int = Field(ge=1)
    z_dim: int = Field(ge=1)
    spade_hidden: int = Field(ge=1)
    use_vae: bool
    use_instance: bool
    num_upsampling_layers: Literal["normal", "more", "most"]
    norm_G: str
    norm_D: str
    norm_E: str
    num_D: int = Field(ge=1)
    n_layers_D: int = Field(ge=1)
    label_nc: int | None = Field(ge=1)
    resnet_n_downsample: int = Field(ge=1)
    resnet_n_blocks: int = Field(ge=0)
    resnet_kernel_size: int = Field(ge=1)
    resnet_initial_kernel_size: int = Field(ge=1)


class TrainSettings(_Section):
    nproc: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    max_steps: int = Field(ge=1)
    decay_start_step: int | None = Field(ge=0)
    lr: float = Field(gt=0)
    beta1: float = Field(ge=0, lt=1)
    beta2: float = Field(ge=0, lt=1)
    ttur: bool
    gan_mode: Literal["hinge", "ls", "original", "w"]
    d_steps_per_g: int = Field(ge=1)
    init_type: Literal["xavier", "normal", "xavier_uniform", "kaiming", "orthogonal", "none"]
    init_variance: float = Field(gt=0)
    accumulation: int = Field(ge=1)
    d_fake: Literal["reuse", "regenerate"]
    kl_reduction: Literal["mean", "sum"]
    preprocess_mode: PreprocessMode
    lambda_feat: float = Field(ge=0)
    lambda_vgg: float = Field(ge=0)
    lambda_kld: float = Field(ge=0)
    vgg_weights: str | None
    load_size: int = Field(ge=8)
    crop_size: int = Field(ge=8)
    aspect_ratio: float = Field(gt=0)
    flip: bool
    ema: bool
    ema_decay: float = Field(gt=0, lt=1)
    ema_warmup: bool
    ema_start_step: int = Field(ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    channels_last: Literal["auto", "on", "off"]
    compile: bool
    deterministic: bool
    device: Device
    dist_timeout_s: int = Field(ge=1)
    num_workers: int = Field(ge=0)
    checkpoint_every: int = Field(ge=1)
    log_every: int = Field(ge=1)
    sample_every: int = Field(ge=1)
    checkpoint_dir: str
    out_dir: str
    model_out: str
    save_state: Literal["weights", "full"]
    state_out: str
    init_from: str | None = Field(min_length=1)
    init_optimizer: bool
    class_remap: ClassRemap
    parent_dir: str

    @model_validator(mode="after")
    def _crop_fits(self) -> TrainSettings:
        if self.crop_size > self.load_size:
            raise ValueError(
                f"train.crop_size ({self.crop_size}) is larger than train.load_size ({self.load_size}); "
                "set crop_size <= load_size"
            )
        return self


class SegmenterSettings(_Section):
    arch: SegmenterArch
    weights: str | None
    width: int = Field(ge=4)
    steps: int = Field(ge=0)
    continue_steps: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    num_workers: int = Field(ge=0)
    device: Device
    channel_order: Literal["rgb", "bgr"]
    pixel_range: float = Field(gt=0)
    mean: tuple[float, float, float]
    std: tuple[float, float, float] | None
    input_size: tuple[int, int] | None
    upsample: Literal["image", "prediction"]
    class_map: dict[int, int] | str | None
    average: Literal["present", "all"]
    out: str
    metrics: str

    @model_validator(mode="after")
    def _spec_fits(self) -> SegmenterSettings:
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"segmenter.std values must be positive, got {list(self.std)}")
        if self.input_size is not None and min(self.input_size) < 8:
            raise ValueError(f"segmenter.input_size must be [height, width] of at least 8, got {list(self.input_size)}")
        return self


class EvaluateSettings(_Section):
    feature_extractor: Literal["inception", "tiny"]
    inception_weights: str | None
    allow_download: bool
    inception_feature_dim: Literal[64, 192, 768, 2048]
    tiny_feature_dim: int = Field(ge=8)
    kid_subset_size: int = Field(ge=2)
    kid_subsets: int = Field(ge=1)
    fid_bootstrap: int = Field(ge=0)
    precision_recall_k: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    max_images: int | None = Field(ge=1)
    ignore_classes: list[int] | None
    vae_style: Literal["real", "random"]
    diversity_net: Literal["alex", "vgg", "squeeze"] | None
    diversity_maps: int = Field(ge=1)
    diversity_samples: int = Field(ge=2)
    num_samples: int = Field(ge=1)
    stats_cache: str | None
    device: Device
    out_dir: str

    @model_validator(mode="after")
    def _tiny_dim_even(self) -> EvaluateSettings:
        if self.tiny_feature_dim % 2:
            raise ValueError(
                f"evaluate.tiny_feature_dim must be even (mean and std halves), got {self.tiny_feature_dim}"
            )
        return self


# The metrics that per-image evidence gives (pipeline/evaluation/evidence.py): register.promote
# if_significant compares only these.
BOOTSTRAP_METRICS = ("fid", "kid_mean", "miou", "accuracy")


class RegisterSettings(_Section):
    model_name: str | None
    metric: str
    greater_is_better: bool
    promote: Literal["if_significant", "if_better", "always", "never"]
    min_improvement: float = Field(ge=0)
    bootstrap: int = Field(ge=1)
    confidence: float = Field(gt=0, lt=1)
    wait_seconds: float = Field(gt=0)
    out: str

    @model_validator(mode="after")
    def _metric_has_evidence(self) -> RegisterSettings:
        if self.promote == "if_significant" and self.metric not in BOOTSTRAP_METRICS:
            raise ValueError(
                f"register.promote: if_significant compares {', '.join(BOOTSTRAP_METRICS)} (per-image evidence); "
                f"register.metric is {self.metric!r}: pick one of those or register.promote: if_better"
            )
        return self


class MlflowSettings(_Section):
    tracking_uri: str | None
    experiment: str | None


class PrefectSettings(_Section):
    failure_webhook: str | None


class RetrainSettings(_Section):
    mode: Literal["finetune", "scratch"]
    finetune_steps: int = Field(ge=1)
    finetune_decay_start_step: int | None = Field(ge=0)
    scratch_steps: int = Field(ge=1)
    scratch_decay_start_step: int | None = Field(ge=0)
    commit: bool
    git_branch: str | None = Field(min_length=1)
    push: bool

    @model_validator(mode="after")
    def _decay_within_steps(self) -> RetrainSettings:
        for kind in ("finetune", "scratch"):
            start, steps = getattr(self, f"{kind}_decay_start_step"), getattr(self, f"{kind}_steps")
            if start is not None and start > steps:
                raise ValueError(f"{kind}_decay_start_step ({start}) is after {kind}_steps ({steps})")
        return self


class AppSettings(_Section):
    model: str | None = Field(min_length=1)
    host: str = Field(min_length=1)
    port: int = Field(ge=0, le=65535)
    device: Device
    cache_models: int = Field(ge=1)
    max_upload_bytes: int = Field(ge=1024)
    max_pixels: int = Field(ge=64)
    max_samples: int = Field(ge=1, le=16)
    debounce_ms: int = Field(ge=0)
    display_px: int = Field(ge=64)


class Params(_Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    seed: int
    data: DataSettings
    model: ModelSettings
    train: TrainSettings
    segmenter: SegmenterSettings
    evaluate: EvaluateSettings
    # "register" would shadow ABCMeta.register on the model class, so the field is named registry in code.
    registry: RegisterSettings = Field(alias="register")
    mlflow: MlflowSettings
    prefect: PrefectSettings
    retrain: RetrainSettings
    app: AppSettings


# ------------------------------------------------------------------------------------------------
# reading


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]).replace("registry", "register") or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key; remove it or check its spelling")
        elif e["type"] == "missing":
            lines.append(f"  - {key}: missing; add it (the project's params.yaml lists every key with a comment)")
        else:
            lines.append(f"  - {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_params(raw: dict | None, source: Path | str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_format_errors(Path(source), err)) from None


def read_params_file(path: str | Path = "params.yaml") -> dict:
    """The raw mapping in a params file, with clear errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found; run from the project root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def load_params(path: str | Path = "params.yaml") -> Params:
    return parse_params(read_params_file(path), path)


def override(params: Params, updates: dict[str, Any], source: str = "the command line") -> Params:
    """``params`` with dotted keys replaced (``{"data.workers": 4}``; None values are skipped), validated."""
    raw = params.model_dump(by_alias=True)
    for key, value in updates.items():
        if value is None:
            continue
        *sections, leaf = key.split(".")
        target = raw
        for section in sections:
            target = target[section]
        if leaf not in target:
            raise ParamsError(f"{source}: {key} is not a setting")
        target[leaf] = value
    return parse_params(raw, source)


# ------------------------------------------------------------------------------------------------
# what a stage may read

_ALIASES = {"registry": "register"}  # attribute name -> key in params.yaml / dvc.yaml


class _ScopedView:
    """Attribute access on a settings object, allowed only for the declared dotted keys."""

    __slots__ = ("_target", "_allowed", "_prefix", "_stage")

    def __init__(self, target: BaseModel, allowed: frozenset[str], prefix: str, stage: str):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_allowed", allowed)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_stage", stage)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._target, name)
        key = self._prefix + _ALIASES.get(name, name)
        if any(key == a or key.startswith(a + ".") for a in self._allowed):
            return value
        if any(a.startswith(key + ".") for a in self._allowed):
            return _ScopedView(value, self._allowed, key + ".", self._stage)
        raise UndeclaredParamError(
            f"the {self._stage} stage read {key}, which its dvc.yaml entry does not list under params; "
            "add it there and to the stage's PARAMS"
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("settings are read-only")


def scoped(params: Params, keys: Iterable[str], stage: str) -> Params:
    """A read-only view of ``params`` that allows only ``keys`` (dotted: ``train``, ``data.out``)."""
    return cast(Params, _ScopedView(params, frozenset(keys), "", stage))
