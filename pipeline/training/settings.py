"""From ``params.yaml`` to the library's objects: the architecture, the trainer's options, the checks.

Every field of :class:`gaugan.config.GauGANConfig` and :class:`gaugan.trainer.TrainOptions` is set
here from params.yaml: the library's own defaults (the reference's values) never apply silently.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from gaugan.classes import ClassTable
from gaugan.config import GauGANConfig
from gaugan.errors import ConfigError
from gaugan.numerics import auto_precision
from gaugan.trainer import TrainOptions
from pipeline.errors import TrainError
from pipeline.io import digest
from pipeline.params import ModelSettings, Params

# Settings that do not change what is computed: a checkpoint stays valid when only these change.
RESUME_NEUTRAL_KEYS = {
    "max_steps",
    "checkpoint_every",
    "log_every",
    "sample_every",
    "num_workers",
    "nproc",
    "out_dir",
    "model_out",
    "checkpoint_dir",
    "device",
    "compile",
    "deterministic",  # which kernels, not what they compute (GPU results differ in the last bits)
    "dist_timeout_s",
    "save_state",  # what is saved at the end, not what is trained
    "state_out",
    "parent_dir",  # where the parent's files are; the parent itself is part of the fingerprint
}


def model_config(params: Params, classes: ClassTable) -> GauGANConfig:
    m, t = params.model, params.train
    return GauGANConfig(
        label_nc=classes.label_nc,
        contain_dontcare_label=classes.contain_dontcare_label,
        use_instance=m.use_instance,
        ngf=m.ngf,
        ndf=m.ndf,
        nef=m.nef,
        z_dim=m.z_dim,
        spade_hidden=m.spade_hidden,
        use_vae=m.use_vae,
        num_upsampling_layers=m.num_upsampling_layers,
        norm_G=m.norm_G,
        norm_D=m.norm_D,
        norm_E=m.norm_E,
        num_D=m.num_D,
        n_layers_D=m.n_layers_D,
        crop_size=t.crop_size,
        aspect_ratio=t.aspect_ratio,
        netG=m.netG,
        resnet_n_downsample=m.resnet_n_downsample,
        resnet_n_blocks=m.resnet_n_blocks,
        resnet_kernel_size=m.resnet_kernel_size,
        resnet_initial_kernel_size=m.resnet_initial_kernel_size,
    )


def check_settings(params: Params, classes: ClassTable, world_size: int, data_root: Path) -> None:
    """Everything that would fail later fails here, before any work, naming the key to change."""
    problems = []
    t, m = params.train, params.model
    if m.label_nc is not None and m.label_nc != classes.label_nc:
        problems.append(
            f"model.label_nc is {m.label_nc} but {data_root / 'classes.json'} has label_nc {classes.label_nc}; "
            "set model.label_nc: null (take it from the data) or fix it"
        )
    if m.use_instance and not classes.has_instances:
        problems.append(
            f"model.use_instance is true but the dataset at {data_root} has no instance maps; "
            "set model.use_instance: false"
        )
    if t.batch_size % world_size:
        problems.append(
            f"train.batch_size ({t.batch_size}) does not divide over {world_size} processes; "
            f"use a multiple of {world_size} or change train.nproc / --nproc-per-node"
        )
    elif (t.batch_size // world_size) % t.accumulation:
        problems.append(
            f"the per-process batch ({t.batch_size // world_size}) does not split into train.accumulation "
            f"({t.accumulation}) micro-batches; make train.batch_size a multiple of {world_size * t.accumulation}"
        )
    if t.decay_start_step is not None and t.decay_start_step > t.max_steps:
        problems.append(f"train.decay_start_step ({t.decay_start_step}) is after train.max_steps ({t.max_steps})")
    try:
        model_config(params, classes)
    except ConfigError as err:  # e.g. a SPADE norm_G or use_vae with model.netG pix2pixhd
        message = str(err).removeprefix("invalid GauGAN config: ")
        for section, names in (("model", ModelSettings.model_fields), ("train", ("crop_size", "aspect_ratio"))):
            message = re.sub(rf"(?<![.'\w])({'|'.join(names)})\b", rf"{section}.\1", message)
        problems += message.split("; ")
    if problems:
        raise TrainError("invalid training settings:\n  - " + "\n  - ".join(problems))


def resolve_precision(setting: str, device: torch.device) -> str:
    if setting == "fp16" and device.type == "cpu":
        raise TrainError("train.precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    if setting != "auto":
        return setting
    return auto_precision(device)  # bf16 only where the GPU has it natively, else fp16 (+ GradScaler)


def train_options(params: Params, device: torch.device) -> TrainOptions:
    t = params.train
    return TrainOptions(
        lr=t.lr,
        beta1=t.beta1,
        beta2=t.beta2,
        ttur=t.ttur,
        lambda_feat=t.lambda_feat,
        lambda_vgg=t.lambda_vgg,
        lambda_kld=t.lambda_kld,
        vgg_weights=t.vgg_weights,
        ema_decay=t.ema_decay if t.ema else None,
        ema_warmup=t.ema_warmup,
        ema_start_step=t.ema_start_step,
        precision=resolve_precision(t.precision, device),
        channels_last=(t.channels_last == "on") or (t.channels_last == "auto" and device.type == "cuda"),
        compile=t.compile,
        total_steps=t.max_steps,
        decay_start_step=t.decay_start_step,
        gan_mode=t.gan_mode,
        d_steps_per_g=t.d_steps_per_g,
        init_type=t.init_type,
        init_variance=t.init_variance,
        accumulation=t.accumulation,
        d_fake=t.d_fake,
        kl_reduction=t.kl_reduction,
    )


def settings_fingerprint(params: Params, dataset: str, parent: dict | None = None) -> str:
    """What a resume checkpoint must match: seed, architecture, computing settings, dataset id, and the
    exact parent model (an alias that moved makes another fingerprint)."""
    train = {k: v for k, v in params.train.model_dump().items() if k not in RESUME_NEUTRAL_KEYS}
    settings = {"seed": params.seed, "model": params.model.model_dump(), "train": train, "data": dataset}
    return digest(settings if parent is None else {**settings, "parent": parent})
