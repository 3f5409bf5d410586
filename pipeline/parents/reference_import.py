"""``gaugan-pipeline import-reference``: an NVlabs/SPADE checkpoint becomes one of this project's models.

Reads a reference checkpoint folder (``latest_net_G.pth``, ``latest_net_E.pth`` for multimodal
models, ``opt.txt`` when present; ``opt.pkl`` is never unpickled) or a ``*_net_G.pth`` file, and:

1. reads the state dicts with ``torch.load(weights_only=True)`` (the published files are plain
   state dicts, some in the pre-1.6 format) and refuses an unreadable or truncated file, a
   discriminator or encoder given as the generator, and non-finite weights;
2. infers what the shapes tell: label channels, ngf, the SPADE hidden width and kernel, the norms,
   a style encoder (``fc`` is then linear: z_dim, and crop/aspect through its size), ``most``;
3. checks them, and every option ``opt.txt`` records that changes the weights, against the setting
   (:func:`gaugan.config.reference_setting` and the built-in class table,
   pipeline/datasets/class_tables.py): dataset_mode, label_nc, contain_dontcare_label, no_instance,
   ngf, z_dim, use_vae, norm_G, num_upsampling_layers; every mismatch is named in one message.
   Shapes cannot tell ``normal`` from ``more``: the setting decides that. The options that do not
   change the weights (crop_size, aspect_ratio, load_size, preprocess_mode) are taken from opt.txt,
   not checked against the paper's setting (a style-code generator's ``fc`` must still fit them);
4. loads the weights strictly (:func:`gaugan.checkpoint.load_reference_checkpoint`) and writes a
   generator file (:func:`gaugan.checkpoint.save_generator`) with the setting's class table and the
   reference's provenance (files, sha256, options) in its ``meta``;
5. with ``register``: opens an MLflow run for the import, logs the model into it (the same pyfunc as
   the register stage) and makes it a new version of that registered model, tagged with the
   provenance; it gets the alias ``challenger``, and ``champion`` only when asked (it has not been
   evaluated here). The file records the run, so ``evaluate --model`` logs its scores there.

Label channels: ``ade20k`` models take 151 (value v on channel v, 0 = "other"), which the built-in
table states as 151 classes without a dontcare channel; the reference's own options say label_nc 150
with contain_dontcare_label, which opt.txt is checked against.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gaugan.classes import ClassTable
from gaugan.config import PIX2PIXHD_OPTIONS, GauGANConfig, parse_norm_G, reference_setting
from gaugan.errors import GauGANError
from pipeline.datasets.class_tables import builtin_table
from pipeline.errors import MissingInputError, ReferenceImportError
from pipeline.io import sha256_file

if TYPE_CHECKING:
    import torch.nn as nn

log = logging.getLogger(__name__)

REPOSITORY = "NVlabs/SPADE"
# What the reference's options file says for each setting (its --dataset_mode defaults).
REFERENCE_OPTIONS = {
    "coco-stuff": {"dataset_mode": "coco", "label_nc": 182, "contain_dontcare_label": True},
    "ade20k": {"dataset_mode": "ade20k", "label_nc": 150, "contain_dontcare_label": True},
    "cityscapes": {"dataset_mode": "cityscapes", "label_nc": 35, "contain_dontcare_label": False},
}
# the reference's --dataset_mode -> this project's setting (and its built-in class table)
DATASET_MODES = {options["dataset_mode"]: setting for setting, options in REFERENCE_OPTIONS.items()}
# the files of a reference checkpoint folder that a parent is made from
REFERENCE_FILES = ("latest_net_G.pth", "latest_net_D.pth", "latest_net_E.pth", "opt.txt")
KNOWN_CHANNELS = {
    151: "ade20k",
    152: "ade20k",
    183: "coco-stuff",
    184: "coco-stuff",
    35: "cityscapes",
    36: "cityscapes",
}


@dataclass
class ReferenceFiles:
    generator: Path
    encoder: Path | None
    opt_txt: Path | None


@dataclass
class Shapes:
    """What a generator's state dict tells about its architecture."""

    semantic_nc: int
    ngf: int
    spade_hidden: int
    norm_G: str
    use_vae: bool
    z_dim: int | None
    most: bool
    fc_cells: int | None  # use_vae: sh * sw of the first feature map
    problems: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# files


def find_files(checkpoint: Path, encoder: Path | None = None) -> ReferenceFiles:
    """A checkpoint folder (``latest_net_G.pth``, ``latest_net_E.pth``, ``opt.txt``) or a G file."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        generator = checkpoint / "latest_net_G.pth"
        if not generator.is_file():
            others = sorted(p.name for p in checkpoint.glob("*_net_G.pth"))
            hint = f"; it has {', '.join(others)}: give one with --checkpoint" if others else ""
            raise MissingInputError(f"{checkpoint}: no latest_net_G.pth in this checkpoint folder{hint}")
        folder = checkpoint
        if encoder is None and (checkpoint / "latest_net_E.pth").is_file():
            encoder = checkpoint / "latest_net_E.pth"
    elif checkpoint.is_file():
        generator, folder = checkpoint, checkpoint.parent
    else:
        raise MissingInputError(f"{checkpoint}: no such checkpoint folder or file (--checkpoint)")
    if encoder is not None and not Path(encoder).is_file():
        raise MissingInputError(f"{encoder}: no such encoder checkpoint (--encoder)")
    opt = folder / "opt.txt"
    if (folder / "opt.pkl").is_file():
        log.info("import-reference: %s is not read (a pickle); opt.txt holds the same options", folder / "opt.pkl")
    return ReferenceFiles(generator, Path(encoder) if encoder else None, opt if opt.is_file() else None)


def read_opt_txt(path: Path) -> dict[str, str]:
    """The reference's options file: ``{:>25}: {:<30}`` lines, ``\\t[default: X]`` when not the default."""
    options: dict[str, str] = {}
    for lineno, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("---"):
            continue
        name, sep, rest = line.partition(":")
        if not sep or not name.strip() or " " in name.strip():
            raise ReferenceImportError(f"{path}:{lineno}: not an options line: {line!r} (expected 'name: value')")
        options[name.strip()] = rest.split("\t[default:")[0].strip()
    if not options:
        raise ReferenceImportError(f"{path}: no options found; is it the reference's opt.txt?")
    return options


def read_state(path: Path, what: str) -> dict:
    """A plain state dict from a ``.pth`` file (``module.`` prefixes of DataParallel removed)."""
    import torch

    from gaugan.checkpoint import unreadable_reason

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means this file cannot be used
        raise ReferenceImportError(
            f"{path}: cannot read the {what} checkpoint, truncated or not a PyTorch file "
            f"({unreadable_reason(err)}); download it again"
        ) from None
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()) or not state:
        raise ReferenceImportError(f"{path}: not a state dict of tensors (found {type(state).__name__})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def network_kind(state: dict) -> str:
    """'G', 'G-pix2pixhd', 'D', 'E' or 'unknown', from the key names of the reference's networks."""
    if "conv_img.weight" in state and any(k.startswith("head_0.") for k in state):
        return "G"
    if first_conv(state) is not None and all(k.startswith("model.") for k in state):
        return "G-pix2pixhd"
    if any(k.startswith("discriminator_0.") for k in state):
        return "D"
    if "fc_mu.weight" in state and any(k.startswith("layer1.") for k in state):
        return "E"
    return "unknown"


# ------------------------------------------------------------------------------------------------
# shapes and checks


def generator_shapes(state: dict, path: Path) -> Shapes:
    """Read the architecture off a generator's state dict (refusing D and E checkpoints)."""
    kind = network_kind(state)
    if kind != "G":
        what = {"D": "a discriminator (latest_net_D.pth)", "E": "a style encoder (latest_net_E.pth)"}.get(
            kind, "not a SPADE generator"
        )
        raise ReferenceImportError(
            f"{path}: this is {what}, not a generator: give latest_net_G.pth (--checkpoint); "
            f"keys start with {', '.join(sorted({k.split('.')[0] for k in state})[:6])}"
        )
    shared = state.get("head_0.norm_0.mlp_shared.0.weight")
    if shared is None or shared.dim() != 4:
        raise ReferenceImportError(f"{path}: the generator has no SPADE layers (head_0.norm_0.mlp_shared.0.weight)")
    fc = state["fc.weight"]
    ngf = int(state["head_0.conv_0.bias"].shape[0]) // 16
    spectral = "head_0.conv_0.weight_orig" in state
    batch = "head_0.norm_0.param_free_norm.running_mean" in state
    k = int(shared.shape[-1])
    shapes = Shapes(
        semantic_nc=int(shared.shape[1]),
        ngf=ngf,
        spade_hidden=int(shared.shape[0]),
        norm_G=f"{'spectral' if spectral else ''}spade{'syncbatch' if batch else 'instance'}{k}x{k}",
        use_vae=fc.dim() == 2,
        z_dim=int(fc.shape[1]) if fc.dim() == 2 else None,
        most=any(key.startswith("up_4.") for key in state),
        fc_cells=int(fc.shape[0]) // (16 * ngf) if fc.dim() == 2 else None,
    )
    final = int(state["conv_img.weight"].shape[1])
    if final != (ngf // 2 if shapes.most else ngf):
        shapes.problems.append(f"conv_img takes {final} channels, expected {ngf // 2 if shapes.most else ngf}")
    return shapes


def _pix2pixhd_weight(state: dict, prefix: str):
    """The weight of the convolution at ``prefix`` (``weight_orig`` under spectral norm), or None."""
    return state.get(f"{prefix}.weight_orig", state.get(f"{prefix}.weight"))


def first_conv(state: dict):
    """pix2pixHD's first convolution weight (``model.1.0``), or None."""
    return _pix2pixhd_weight(state, "model.1.0")


def pix2pixhd_config(
    setting: str, table: ClassTable, state: dict, options: dict[str, str]
) -> tuple[GauGANConfig, list[str]]:
    """The config of a reference ``--netG pix2pixhd`` generator, read off its keys and shapes: width,
    norm, stride-2 convolutions, residual blocks and kernels (gaugan/pix2pixhd.py has the layout)."""
    first = first_conv(state)
    spectral = "model.1.0.weight_orig" in state
    norm = "syncbatch" if "model.1.1.running_mean" in state else "instance"
    index, downs = 3, 0
    while (w := _pix2pixhd_weight(state, f"model.{index}.0")) is not None and w.shape[0] == 2 * w.shape[1]:
        downs, index = downs + 1, index + 2
    blocks = sorted({int(k.split(".")[1]) for k in state if ".conv_block." in k})
    block = _pix2pixhd_weight(state, f"model.{blocks[0]}.conv_block.1.0") if blocks else None
    ref = replace(reference_setting(setting), **_size_options(options))
    base = table.label_nc + int(table.contain_dontcare_label)
    problems = []
    if int(first.shape[1]) not in (base, base + 1):
        problems.append(
            f"the generator takes {int(first.shape[1])} label channels but the {setting} setting takes {base}, "
            f"{base + 1} with instance edges"
        )
    try:
        config = replace(
            ref,
            label_nc=table.label_nc,
            contain_dontcare_label=table.contain_dontcare_label,
            use_instance=int(first.shape[1]) == base + 1,
            ngf=int(first.shape[0]),
            netG="pix2pixhd",
            norm_G=f"{'spectral' if spectral else ''}{norm}",
            use_vae=False,
            resnet_n_downsample=downs,
            resnet_n_blocks=len(blocks),
            resnet_kernel_size=int(block.shape[-1]) if block is not None else ref.resnet_kernel_size,
            resnet_initial_kernel_size=int(first.shape[-1]),
        )
    except GauGANError as err:
        raise ReferenceImportError(f"a pix2pixhd generator this project cannot build: {err}") from None
    return config, problems


def expected_config(
    setting: str, table: ClassTable, shapes: Shapes, path: Path, options: dict[str, str] | None = None
) -> tuple[GauGANConfig, list[str]]:
    """The config of a generator of ``setting`` with these shapes, and every way the shapes disagree.

    The options that do not change the weights (crop_size, aspect_ratio; load_size and
    preprocess_mode are not part of the model) come from ``options`` (opt.txt) when it has them,
    else from the setting: a checkpoint trained at any crop size imports.
    """
    ref = replace(reference_setting(setting, use_vae=shapes.use_vae), **_size_options(options or {}))
    base = table.label_nc + int(table.contain_dontcare_label)
    problems = list(shapes.problems)
    if shapes.semantic_nc not in (base, base + 1):
        guess = KNOWN_CHANNELS.get(shapes.semantic_nc)
        problems.append(
            f"the generator takes {shapes.semantic_nc} label channels but the {setting} setting takes {base} "
            f"({table.label_nc} classes{' + dontcare' if table.contain_dontcare_label else ''}), {base + 1} with "
            f"instance edges" + (f"; {shapes.semantic_nc} is what a {guess} generator takes" if guess else "")
        )
    if shapes.most != (ref.num_upsampling_layers == "most"):
        problems.append(
            f"the generator has {'7' if shapes.most else '5 or 6'} upsamplings, the {setting} setting "
            f"num_upsampling_layers {ref.num_upsampling_layers!r}"
        )
    config = replace(
        ref,
        label_nc=table.label_nc,
        contain_dontcare_label=table.contain_dontcare_label,
        use_instance=shapes.semantic_nc == base + 1,
        ngf=shapes.ngf,
        spade_hidden=shapes.spade_hidden,
        norm_G=shapes.norm_G,
        z_dim=shapes.z_dim or ref.z_dim,
    )
    if shapes.use_vae and shapes.fc_cells != config.latent_hw[0] * config.latent_hw[1]:
        problems.append(
            f"the style-code layer fc makes a first feature map of {shapes.fc_cells} cells, the {setting} setting "
            f"(crop_size {ref.crop_size}, aspect_ratio {ref.aspect_ratio}) {config.latent_hw[0] * config.latent_hw[1]}"
        )
    return config, problems


def _size_options(options: dict[str, str]) -> dict:
    """crop_size and aspect_ratio as opt.txt states them (those it states, as numbers)."""
    out: dict = {}
    try:
        if "crop_size" in options:
            out["crop_size"] = int(float(options["crop_size"]))
        if "aspect_ratio" in options:
            out["aspect_ratio"] = float(options["aspect_ratio"])
    except ValueError as err:
        raise ReferenceImportError(f"opt.txt: crop_size/aspect_ratio must be numbers ({err})") from None
    return out


def _flag(value: str) -> bool | None:
    return {"true": True, "false": False}.get(value.strip().lower())


def option_problems(options: dict[str, str], setting: str, config: GauGANConfig) -> list[str]:
    """How ``opt.txt`` disagrees with the setting and with what the shapes tell (options it lacks pass)."""
    expected: dict[str, object] = {
        **REFERENCE_OPTIONS[setting],
        "no_instance": not config.use_instance,
        "ngf": config.ngf,
        "use_vae": config.use_vae,
        "netG": config.netG,
    }
    if config.netG == "pix2pixhd":
        expected.update({name: getattr(config, name) for name in PIX2PIXHD_OPTIONS})
    else:
        expected["num_upsampling_layers"] = config.num_upsampling_layers
    if config.use_vae:
        expected["z_dim"] = config.z_dim
    problems = []
    for key, want in expected.items():
        if key not in options:
            continue
        raw = options[key]
        if isinstance(want, bool):
            ok = _flag(raw) == want
        elif isinstance(want, (int, float)):
            try:
                ok = math.isclose(float(raw), float(want), rel_tol=1e-6)
            except ValueError:
                ok = False
        else:
            ok = raw == str(want)
        if not ok:
            problems.append(f"opt.txt {key} is {raw!r}, the {setting} setting and the weights say {want!r}")
    if "norm_G" in options and not _same_norm(options["norm_G"], config.norm_G):
        problems.append(f"opt.txt norm_G is {options['norm_G']!r}, the weights are {config.norm_G!r}")
    return problems


def _same_norm(a: str, b: str) -> bool:
    """norm_G values that build the same weights (batch and syncbatch hold the same tensors)."""
    try:
        pa, pb = parse_norm_G(a), parse_norm_G(b)
    except Exception:  # noqa: BLE001 - an unknown value simply differs
        return False
    same_kind = {pa[2], pb[2]} <= {"batch", "syncbatch"} or pa[2] == pb[2]
    return pa[0] == pb[0] and pa[1] == pb[1] and pa[3] == pb[3] and same_kind


def check_finite(state: dict, path: Path) -> None:
    import torch

    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ReferenceImportError(f"{path}: non-finite weights in {', '.join(bad[:5])}; the file is damaged")


# ------------------------------------------------------------------------------------------------
# networks


@dataclass
class ReferenceModel:
    netG: nn.Module
    netE: nn.Module | None
    config: GauGANConfig
    classes: ClassTable
    options: dict[str, str]


def load_reference(setting: str, files: ReferenceFiles) -> ReferenceModel:
    """The checked, strictly loaded networks of a reference checkpoint of ``setting``."""
    from gaugan.checkpoint import load_reference_checkpoint
    from gaugan.networks import build_generator

    if setting not in REFERENCE_OPTIONS:
        raise ReferenceImportError(f"unknown setting {setting!r}; choose one of {', '.join(REFERENCE_OPTIONS)}")
    state = read_state(files.generator, "generator")
    table = builtin_table(setting)
    options = read_opt_txt(files.opt_txt) if files.opt_txt is not None else {}
    if network_kind(state) == "G-pix2pixhd":
        config, problems = pix2pixhd_config(setting, table, state, options)
    else:
        config, problems = expected_config(
            setting, table, generator_shapes(state, files.generator), files.generator, options
        )
    problems += option_problems(options, setting, config)
    if problems:
        raise ReferenceImportError(
            f"{files.generator} does not fit the {setting} setting"
            + (f" (with {files.opt_txt})" if files.opt_txt else "")
            + ":\n  - "
            + "\n  - ".join(problems)
            + "\nGive a checkpoint of this setting, or the --setting it was trained with."
        )
    check_finite(state, files.generator)
    del state
    netG = load_reference_checkpoint(build_generator(config), files.generator)
    netE = None
    if files.encoder is not None:
        netE, config = load_encoder(files.encoder, config, files.generator)
    elif config.use_vae:
        log.warning(
            "import-reference: %s takes a style code but no encoder was given (--encoder latest_net_E.pth): "
            "the model draws random styles only and cannot copy the style of an image",
            files.generator,
        )
    classes = replace(table, has_instances=config.use_instance)
    return ReferenceModel(netG.eval(), netE, config, classes, options)


def load_encoder(path: Path, config: GauGANConfig, generator: Path) -> tuple[nn.Module, GauGANConfig]:
    """The style encoder of a multimodal generator, its width and norm read off its shapes."""
    from gaugan.checkpoint import load_reference_checkpoint
    from gaugan.encoder import ConvEncoder

    state = read_state(path, "encoder")
    kind = network_kind(state)
    if kind != "E":
        raise ReferenceImportError(
            f"{path}: not a style encoder checkpoint (it looks like {kind}); give latest_net_E.pth"
        )
    if not config.use_vae:
        raise ReferenceImportError(
            f"{path}: an encoder was given but {generator} takes no style code (its fc is a convolution): "
            "leave out --encoder, or give the generator trained with it"
        )
    z_dim = int(state["fc_mu.weight"].shape[0])
    if z_dim != config.z_dim:
        raise ReferenceImportError(f"{path}: the encoder makes {z_dim}-d style codes, {generator} takes {config.z_dim}")
    spectral = "layer1.0.weight_orig" in state
    first = state["layer1.0.weight_orig" if spectral else "layer1.0.weight"]
    batch = any(k.endswith("running_mean") for k in state)
    config = replace(
        config, nef=int(first.shape[0]), norm_E=f"{'spectral' if spectral else ''}{'batch' if batch else 'instance'}"
    )
    check_finite(state, path)
    return load_reference_checkpoint(ConvEncoder(config), path).eval(), config


def provenance(setting: str, files: ReferenceFiles, options: dict[str, str], root: Path) -> dict:
    """The generator file's ``meta``: where the weights came from."""
    from pipeline.versioning.gitstate import head

    return {
        "source": "reference",
        "reference": {
            "repository": REPOSITORY,
            "setting": setting,
            "generator": str(files.generator),
            "generator_sha256": sha256_file(files.generator),
            "encoder": str(files.encoder) if files.encoder else None,
            "encoder_sha256": sha256_file(files.encoder) if files.encoder else None,
            "opt_txt": str(files.opt_txt) if files.opt_txt else None,
            "options": options,
            "epoch": options.get("which_epoch"),
        },
        "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": head(root) or "",
    }


# ------------------------------------------------------------------------------------------------
# the command


def import_reference(
    setting: str,
    checkpoint: Path,
    out: Path,
    encoder: Path | None = None,
    register: str | None = None,
    champion: bool = False,
    root: Path = Path("."),
) -> dict:
    """Import a reference checkpoint into the generator file ``out`` (and register it); returns a summary."""
    from gaugan.checkpoint import load_generator, save_generator

    files = find_files(Path(checkpoint), Path(encoder) if encoder else None)
    model = load_reference(setting, files)
    meta = provenance(setting, files, model.options, root)
    tracker = start_import_run(model, meta, root) if register else None
    out = Path(out)
    try:
        save_generator(out, model.netG, model.netE, model.config, model.classes, meta)
        loaded = load_generator(out)  # it loads back as any generator file does
        summary = {
            "out": str(out),
            "setting": setting,
            "config": loaded.config.to_dict(),
            "semantic_nc": loaded.config.semantic_nc,
            "encoder": model.netE is not None,
            "reference": meta["reference"],
        }
        if tracker is not None:
            summary["registration"] = register_import(tracker, out, model, meta, str(register), champion)
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise
    return summary


def start_import_run(model: ReferenceModel, meta: dict, root: Path):
    """An MLflow run for the import (experiment ``gaugan-<dataset>``); its id goes into ``meta``."""
    from pipeline.tracking import Tracker, resolve_tracking_uri

    ref = meta["reference"]
    tracker = Tracker(resolve_tracking_uri(None, root), f"gaugan-{model.classes.dataset}")
    settings = {
        "reference": {k: ref[k] for k in ("repository", "setting", "generator", "encoder", "epoch")},
        "model": model.config.to_dict(),
    }
    run_id = tracker.start(None, settings, import_tags(meta, model.classes))
    meta.update(run_id=run_id, tracking_uri=tracker.uri, experiment=tracker.experiment)
    return tracker


def import_tags(meta: dict, classes: ClassTable) -> dict[str, str]:
    """Provenance tags of the import's run and registered version."""
    ref = meta["reference"]
    tags = {
        "source": "reference",
        "reference_repository": ref["repository"],
        "reference_setting": ref["setting"],
        "reference_generator": Path(ref["generator"]).name,
        "reference_generator_sha256": ref["generator_sha256"],
        "reference_encoder_sha256": ref["encoder_sha256"] or "",
        "reference_options": "opt.txt" if ref["opt_txt"] else "none",
        "reference_epoch": ref["epoch"] or "",
        "dataset": classes.dataset,
        "git_commit": meta["git_commit"],
    }
    return {k: v for k, v in tags.items() if v}


def register_import(tracker, out: Path, model: ReferenceModel, meta: dict, name: str, champion: bool) -> dict:
    """Log the model into the import's run and register it as a new version of ``name``."""
    from pipeline.params import RegisterSettings
    from pipeline.registry.versions import log_model, register_version, tag_run
    from pipeline.tracking import RunRef

    if meta["reference"]["opt_txt"]:
        tracker.log_artifact(Path(meta["reference"]["opt_txt"]), "reference")
    tracker.end("FINISHED")
    ref = RunRef(meta["run_id"], meta["tracking_uri"], meta["experiment"])
    info = log_model(ref, out, model.config)
    tags = {**import_tags(meta, model.classes), "generator_sha256": sha256_file(out)}
    settings = RegisterSettings(
        model_name=name,
        metric="fid",
        greater_is_better=False,
        promote="always" if champion else "never",
        min_improvement=0.0,  # the next three: unused, 'always' and 'never' compare nothing
        bootstrap=1,
        confidence=0.95,
        out=str(out.with_suffix(".registration.json")),
        wait_seconds=120,  # as a register stage waits for its turn (register.wait_seconds in params.yaml)
    )
    result = register_version(ref, name, info, tags, None, settings, Path(settings.out))
    tag_run(ref, result)
    return result


# ------------------------------------------------------------------------------------------------
# a reference folder as a parent of a fine-tune (resolve-parent): a training state


def convert_reference(folder: Path, out: Path, sources: dict) -> None:
    """The reference checkpoint as a training state: the setting from opt.txt's dataset_mode (or, without
    opt.txt, from the number of label channels); crop size and aspect ratio from opt.txt; D's
    architecture from its shapes. No EMA and no optimizer moments (the reference keeps none)."""
    from gaugan.checkpoint import save_train_state

    files = find_files(folder)
    options = read_opt_txt(files.opt_txt) if files.opt_txt is not None else {}
    mode = options.get("dataset_mode")
    if mode:
        setting = DATASET_MODES.get(mode)
    else:
        shapes = generator_shapes(read_state(files.generator, "generator"), files.generator)
        setting = KNOWN_CHANNELS.get(shapes.semantic_nc)
    if setting is None:
        raise ReferenceImportError(
            f"{folder}: an NVlabs checkpoint of dataset_mode {mode!r}: only coco, ade20k and cityscapes checkpoints "
            "have a known class table; import others into this project's format first"
        )
    model = load_reference(setting, files)
    config, D = model.config, None
    if (folder / "latest_net_D.pth").is_file():
        D = read_state(folder / "latest_net_D.pth", "discriminator")
        if network_kind(D) != "D":
            raise ReferenceImportError(f"{folder / 'latest_net_D.pth'}: not a discriminator checkpoint")
        config = replace(config, **discriminator_shapes(D))
    E = model.netE.state_dict() if model.netE is not None else None
    parts = {"G": model.netG.state_dict(), "E": E, "D": D, "ema": None}
    meta = {"source": "reference", "reference": {"setting": setting, "options": options, "files": sources}}
    save_train_state(out, parts, config, model.classes, meta)


def discriminator_shapes(state: dict) -> dict:
    """ndf, num_D, n_layers_D and norm_D read off a multi-scale discriminator's state dict."""
    layers = {k.split(".")[1] for k in state if k.startswith("discriminator_0.")}
    return {
        "ndf": int(state["discriminator_0.model0.0.weight"].shape[0]),
        "num_D": len({k.split(".")[0] for k in state}),
        "n_layers_D": len(layers) - 1,
        "norm_D": f"{'spectral' if any(k.endswith('weight_orig') for k in state) else ''}"
        f"{'batch' if any(k.endswith('running_mean') for k in state) else 'instance'}",
    }
