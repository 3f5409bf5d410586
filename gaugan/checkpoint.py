"""Generator files (one file: weights, config, class table, provenance) and reference checkpoints."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from gaugan.config import GauGANConfig
from gaugan.encoder import ConvEncoder
from gaugan.generator import SPADEGenerator

FORMAT = "gaugan-generator/1"


@dataclass
class LoadedGenerator:
    netG: SPADEGenerator
    netE: ConvEncoder | None
    config: GauGANConfig
    classes: dict
    meta: dict


def save_generator(path: Path | str, netG: nn.Module, netE: nn.Module | None, config: GauGANConfig,
                   classes: dict, meta: dict) -> None:
    """Atomic write; the file loads with ``torch.load(weights_only=True)``."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "config": config.to_dict(),
        "classes": classes,
        "meta": meta,
        "G": {k: v.detach().cpu() for k, v in netG.state_dict().items()},
        "E": {k: v.detach().cpu() for k, v in netE.state_dict().items()} if netE is not None else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_generator(path: Path | str, device: torch.device | str = "cpu") -> LoadedGenerator:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no generator file; run the train stage or give the right path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling problem means "not our file"
        raise ValueError(f"{path}: not a readable generator file ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a GauGAN generator file (expected format {FORMAT!r})")
    config = GauGANConfig.from_dict(payload["config"])
    netG = SPADEGenerator(config)
    netG.load_state_dict(payload["G"])
    netE = None
    if config.use_vae and payload.get("E") is not None:
        netE = ConvEncoder(config)
        netE.load_state_dict(payload["E"])
        netE = netE.to(device).eval()
    return LoadedGenerator(netG.to(device).eval(), netE, config, payload.get("classes") or {}, payload.get("meta") or {})


def load_reference_checkpoint(module: nn.Module, path: Path | str) -> None:
    """Load an NVlabs/SPADE ``latest_net_{G,D,E}.pth`` into the matching module, strictly."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} in file, {tuple(own[k].shape)} here"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path} does not match {type(module).__name__}: missing keys {missing[:5]}, unexpected keys "
            f"{unexpected[:5]}, shape mismatches {shapes[:3]}; check the setting (label_nc, use_instance, "
            "num_upsampling_layers, ngf)"
        )
    module.load_state_dict(state, strict=True)
