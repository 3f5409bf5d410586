"""Starting a training run from a trained model (a fine-tune): the parent, checked, grown, loaded.

A parent is what a generator file, a training-state file or an NVlabs checkpoint holds
(:class:`ParentModel`). :func:`start_from_parent` checks that it is the same architecture as the
trainer's, maps its class table onto the data's (``gaugan.growth``: new classes grow the label
convolutions, a renamed or reordered class is refused), and loads it into a fresh trainer: step
counter, learning-rate schedule and skip counters start over; the EMA starts from the parent's EMA
when it has one, else from the loaded G; optimizer moments only when the parent has them and the
caller asks for them. Whatever the parent lacks (the discriminator of a generator file or of an
official G-only checkpoint) keeps its fresh initial weights, and a warning says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gaugan.checkpoint import FORMAT, STATE_FORMAT, read_model_file
from gaugan.classes import ClassTable
from gaugan.config import PIX2PIXHD_OPTIONS, GauGANConfig
from gaugan.errors import CheckpointError
from gaugan.growth import class_index_map, grow_moments, grow_state, semantic_index_map
from gaugan.trainer import OPTIMIZER_PARTS, GauGANTrainer

# What must be equal for the parent's weights to fit (the label channels may grow).
GENERATOR_FIELDS = ("netG", "ngf", "norm_G", "use_vae", "use_instance", "contain_dontcare_label")
SPADE_FIELDS = ("num_upsampling_layers",)
SPADE_NORM_FIELDS = ("spade_hidden",)
ENCODER_FIELDS = ("z_dim", "nef", "norm_E")
DISCRIMINATOR_FIELDS = ("ndf", "norm_D", "num_D", "n_layers_D")
FIELD_NAMES = {"use_instance": "instance channel (use_instance)", "contain_dontcare_label": "dontcare channel"}


@dataclass
class ParentModel:
    """The networks of a parent model as state dicts (CPU), its architecture, class table and provenance."""

    source: str  # the file or folder, for messages
    kind: str  # generator | state | reference
    config: GauGANConfig
    classes: ClassTable | None  # None: the file does not say (then the data's first classes are assumed)
    meta: dict
    G: dict
    E: dict | None = None
    D: dict | None = None
    ema: dict | None = None  # a GeneratorModel state (netG.*, netE.*)
    optimizers: dict = field(default_factory=dict)  # opt_G, opt_D, scaler_G, scaler_D when saved

    @property
    def has_moments(self) -> bool:
        return self.optimizers.get("opt_G") is not None and self.optimizers.get("opt_D") is not None


def read_parent_file(path: Path | str) -> ParentModel:
    """A generator file (G, E: the served weights) or a training-state file (G, E, D, EMA, moments)."""
    payload = read_model_file(path)
    classes = ClassTable.from_dict(payload["classes"], f"{path} [classes]") if payload.get("classes") else None
    config = GauGANConfig.from_dict(payload["config"])
    meta = payload.get("meta") or {}
    if payload["format"] == FORMAT:
        return ParentModel(str(path), "generator", config, classes, meta, payload["G"], payload.get("E"))
    assert payload["format"] == STATE_FORMAT
    optimizers = {k: payload.get(k) for k in OPTIMIZER_PARTS if payload.get(k) is not None}
    return ParentModel(
        str(path),
        "state",
        config,
        classes,
        meta,
        payload["G"],
        payload.get("E"),
        payload.get("D"),
        payload.get("ema"),
        optimizers,
    )


def architecture_problems(parent: ParentModel, config: GauGANConfig) -> list[str]:
    """Every setting in which the parent's networks differ from ``config``'s (label_nc aside)."""
    fields = list(GENERATOR_FIELDS)
    if config.netG == "pix2pixhd":
        fields += PIX2PIXHD_OPTIONS
    else:
        fields += SPADE_FIELDS + (SPADE_NORM_FIELDS if "spade" in config.norm_G else ())
    if config.use_vae and parent.E is not None:
        fields += ENCODER_FIELDS
    if parent.D is not None:
        fields += DISCRIMINATOR_FIELDS
    problems = [
        f"{FIELD_NAMES.get(name, name)} is {getattr(parent.config, name)!r} there and {getattr(config, name)!r} here"
        for name in fields
        if _same_weights(getattr(parent.config, name)) != _same_weights(getattr(config, name))
    ]
    if config.use_vae and parent.config.latent_hw != config.latent_hw:
        problems.append(
            f"the style code's first feature map is {parent.config.latent_hw} there (crop_size "
            f"{parent.config.crop_size}, aspect_ratio {parent.config.aspect_ratio}) and {config.latent_hw} here"
        )
    return problems


def _same_weights(value):
    """Settings that hold the same tensors compare equal: batch and syncbatch norms."""
    return value.replace("syncbatch", "batch") if isinstance(value, str) else value


def parent_classes(parent: ParentModel, classes: ClassTable, warnings: list[str]) -> ClassTable:
    """The parent's class table; a parent without one is taken to have the data's first classes."""
    if parent.classes is not None:
        return parent.classes
    n = parent.config.label_nc
    if n > classes.label_nc:
        raise CheckpointError(
            f"{parent.source}: the parent takes {n} classes, the data has {classes.label_nc}; a fine-tune may add "
            "classes, not remove them"
        )
    warnings.append(f"{parent.source} names no classes: its {n} classes are taken to be the data's first {n}")
    return ClassTable(classes.dataset, classes.names[:n], classes.colors[:n], parent.config.contain_dontcare_label)


def start_from_parent(
    trainer: GauGANTrainer, parent: ParentModel, classes: ClassTable, remap: str = "strict", moments: bool = False
) -> list[str]:
    """Load ``parent`` into a fresh ``trainer`` whose data has the class table ``classes``; -> warnings
    (what starts fresh, and why). Refuses another architecture and a renamed or reordered class table
    with one line naming the file and both values."""
    config = trainer.config
    problems = architecture_problems(parent, config)
    if problems:
        raise CheckpointError(
            f"{parent.source}: another architecture: {'; '.join(problems)}. Set the model settings to the parent's, "
            "or train from scratch"
        )
    warnings: list[str] = []
    class_map = class_index_map(parent_classes(parent, classes, warnings), classes, remap, parent.source)
    index, channels = semantic_index_map(parent.config, config, class_map), config.semantic_nc
    parts: dict = {
        "G": grow_state(parent.G, index, channels),
        "E": parent.E,
        "D": grow_state(parent.D, index, channels, discriminator=True) if parent.D is not None else None,
        "ema": grow_state(parent.ema, index, channels) if parent.ema is not None else None,
    }
    if config.use_vae and parent.E is None:
        warnings.append(f"{parent.source} has no style encoder (E): it starts from fresh weights")
    if parent.D is None:
        warnings.append(f"{parent.source} has no discriminator (D): it starts from fresh weights")
    if moments and parent.has_moments:
        parts.update(_grown_moments(trainer, parent, index, channels))
    elif moments:
        warnings.append(f"{parent.source} holds no optimizer moments (saved with weights only): Adam starts fresh")
    trainer.load_state_dict(parts, fine_tune=True)
    return warnings


def _grown_moments(trainer: GauGANTrainer, parent: ParentModel, index: list[int], channels: int) -> dict:
    g_names = [name for name, _ in trainer.generator.named_parameters()]
    d_names = [name for name, _ in trainer.discriminator.named_parameters()]
    opt = parent.optimizers
    return {
        "opt_G": grow_moments(opt["opt_G"], g_names, index, channels, discriminator=False),
        "opt_D": grow_moments(opt["opt_D"], d_names, index, channels, discriminator=True),
        "scaler_G": opt.get("scaler_G"),
        "scaler_D": opt.get("scaler_D"),
    }
