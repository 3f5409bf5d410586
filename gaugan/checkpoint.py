"""Generator files (one file: weights, config, class table, provenance), training-state files (what
continuing needs: G, E, D, EMA, optionally the optimizer moments) and NVlabs reference checkpoints."""

from __future__ import annotations

import os
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn as nn

from gaugan.classes import ClassTable
from gaugan.config import GauGANConfig
from gaugan.encoder import ConvEncoder
from gaugan.errors import CheckpointError, MissingFileError
from gaugan.networks import Generator, build_encoder, build_generator

FORMAT = "gaugan-generator/1"
STATE_FORMAT = "gaugan-train-state/1"
__all__ = [
    "CheckpointError",
    "LoadedGenerator",
    "load_generator",
    "load_reference_checkpoint",
    "read_model_file",
    "save_generator",
    "save_train_state",
]


@dataclass
class LoadedGenerator:
    netG: Generator
    netE: ConvEncoder | None
    config: GauGANConfig
    classes: ClassTable | None  # None only in files written without one
    meta: dict


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under torch.compile and DDP wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = cast(nn.Module, module._orig_mod)
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def _plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in unwrap(module).state_dict().items()}


def atomic_save(obj, path: Path | str) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: never a half-written file.

    The temporary file is created by a plain open (not mkstemp, whose files are 0600), so the
    result gets the usual umask mode and the rest of the team can read the model.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_generator(
    path: Path | str, netG: nn.Module, netE: nn.Module | None, config: GauGANConfig, classes: ClassTable, meta: dict
) -> None:
    """Write {format, config, classes, meta, G, E} atomically; it loads with ``torch.load(weights_only=True)``.

    ``classes`` is the prepared dataset's class table, ``meta`` any provenance (run id, dataset id,
    step) as plain JSON-like values.
    """
    payload = {
        "format": FORMAT,
        "config": config.to_dict(),
        "classes": classes.to_dict(),
        "meta": meta,
        "G": _plain_state(netG),
        "E": _plain_state(netE) if netE is not None else None,
    }
    atomic_save(payload, path)


def save_train_state(path: Path | str, parts: dict, config: GauGANConfig, classes: ClassTable, meta: dict) -> None:
    """Write {format, config, classes, meta, G, E, D, ema[, opt_G, opt_D, scaler_G, scaler_D]} atomically.

    ``parts``: :meth:`gaugan.trainer.GauGANTrainer.state_dict` of named parts (CPU tensors). G is the live
    generator and ``ema`` its average (the generator file's weights); it loads with
    ``torch.load(weights_only=True)``. Kept apart from the generator file, which serving reads.
    """
    atomic_save(
        {"format": STATE_FORMAT, "config": config.to_dict(), "classes": classes.to_dict(), "meta": meta, **parts},
        path,
    )


def read_model_file(path: Path | str) -> dict:
    """The payload of a generator file or a training-state file (CPU tensors); anything else is refused
    with a one-line error naming the file and what it holds."""
    path = Path(path)
    payload = read_torch_file(path, "generator or training-state file", "")
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found not in (FORMAT, STATE_FORMAT):
        hint = " (a plain state dict: an NVlabs checkpoint? give its folder)" if found is None else ""
        raise CheckpointError(
            f"{path}: neither a GauGAN generator file ({FORMAT!r}) nor a training state ({STATE_FORMAT!r}): "
            f"it holds {found!r}{hint}"
        )
    return payload


def load_generator(path: Path | str, device: torch.device | str = "cpu") -> LoadedGenerator:
    """A file written by :func:`save_generator` -> eval-mode networks on ``device`` and their settings."""
    path = Path(path)
    payload = read_torch_file(path, "generator file", "; run the train stage or give the right path")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        hint = (
            "; an NVlabs latest_net_G.pth loads with load_reference_checkpoint"
            if isinstance(payload, dict) and "format" not in payload
            else ""
        )
        raise CheckpointError(f"{path}: not a GauGAN generator file (format {found!r}, expected {FORMAT!r}){hint}")
    try:
        config = GauGANConfig.from_dict(_part(payload, "config", dict, path))
        netG = build_generator(config)
        _load_strict(netG, _part(payload, "G", dict, path), f"{path} [G]")
        netE = None
        if config.use_vae and payload.get("E") is not None:
            netE = cast(ConvEncoder, build_encoder(config))
            _load_strict(netE, payload["E"], f"{path} [E]")
        classes = ClassTable.from_dict(payload["classes"], f"{path} [classes]") if payload.get("classes") else None
        meta = payload.get("meta") or {}
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: 'meta' is a {type(meta).__name__}, not a dict")
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged or hand-made file: whatever breaks, nothing is loaded
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"{path}: a generator file whose settings do not make a model ({type(err).__name__}: {first}); "
            "export it again (train or import-reference)"
        ) from None
    if netE is not None:
        netE = netE.to(device).eval().requires_grad_(False)
    netG = netG.to(device).eval().requires_grad_(False)
    return LoadedGenerator(netG, netE, config, classes, meta)


def _part(payload: dict, key: str, kind: type, path: Path):
    """payload[key], which must be a ``kind``: a file missing it is refused by name."""
    value = payload.get(key)
    if not isinstance(value, kind):
        found = "missing" if value is None else f"a {type(value).__name__}"
        raise CheckpointError(f"{path}: its {key!r} is {found}, not a {kind.__name__}; export the file again")
    return value


def read_torch_file(path: Path | str, what: str, fix: str = ""):
    """A ``.pt``/``.pth`` file's objects onto the CPU, read with ``torch.load(weights_only=True)``
    (tensors and plain containers only: a pickle that would run code is refused, never run). A
    missing file is a :class:`MissingFileError`, a truncated or foreign one a :class:`CheckpointError`,
    each one line naming the file, ``what`` it should be and the ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such {what}{fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise CheckpointError(f"{path}: not a readable {what} ({unreadable_reason(err)}){fix}") from None


def unreadable_reason(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one short line."""
    if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err).lower().replace(" ", "_"):
        return "it holds Python objects other than tensors, which are never unpickled (they could run code)"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = lines[0].split(". ")[0] if lines else "unreadable"
    return f"{type(err).__name__}: {first}; truncated or not a PyTorch file?"


def _load_strict(module: nn.Module, state: dict, source: str) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: expected a state_dict, got {type(state).__name__}")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} here"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:

        def listing(name: str, items: list) -> str:
            return f"{len(items)} {name}" + (
                f" ({', '.join(items[:20])}{', ...' if len(items) > 20 else ''})" if items else ""
            )

        raise CheckpointError(
            f"{source} does not match {type(module).__name__}: {listing('missing keys', missing)}; "
            f"{listing('unexpected keys', unexpected)}; {listing('shape mismatches', shapes)}. Check the "
            "setting: label_nc, contain_dontcare_label, use_instance, use_vae, ngf/ndf, num_upsampling_layers, "
            "n_layers_D, num_D, crop_size/aspect_ratio"
        )
    module.load_state_dict(state, strict=True)


def load_reference_checkpoint(module: nn.Module, path: Path | str) -> nn.Module:
    """Load an NVlabs/SPADE ``latest_net_{G,D,E}.pth`` into the matching module, strictly.

    Raises :class:`CheckpointError` listing every missing and unexpected key and shape mismatch.
    """
    path = Path(path)
    state = read_torch_file(path, "checkpoint file", "")
    if isinstance(state, dict) and state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}  # saved from a DataParallel wrapper
    _load_strict(module, state, str(path))
    return module
