"""Shared test set-up: offline environment, paths to the real fixtures, and the builders tests share.

Builders (import them with ``from conftest import ...``):

- :func:`params_dict` / :func:`make_params`: the project's ``params.yaml`` with overrides, as a raw
  mapping (to write into a test project) or validated; the settings have no defaults in code;
- :func:`tiny_config`: a few-channel GauGAN architecture for fast model tests;
  :func:`random_batch`, :func:`train_options`, :func:`trainer_weights`: a random training batch,
  trainer options without the VGG loss, and a trainer's G and D parameters (copied) to compare;
- :func:`toy_classes`, :func:`write_toy_prepared`: a small prepared dataset written directly in the
  prepared format; :func:`write_tiny_generator`: a random generator file as the train stage writes it;
- :func:`copy_project`: this project's files in a fresh folder (for real ``dvc``/``git`` runs);
- :func:`network_outputs`: a trained G and D as functions (their outputs for fixed inputs).
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, settings

from pipeline.offline import set_offline_env

set_offline_env()
os.environ.setdefault("OMP_NUM_THREADS", "2")

# Hypothesis budgets: "ci" (make test: a fixed seed, so a run is the same run everywhere) and "fuzz"
# (make fuzz: twenty times the cases, a new seed each run; a failure prints the case to replay)
settings.register_profile(
    "ci",
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("fuzz", max_examples=5000, deadline=None, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# the team stack's session fixtures (PostgreSQL, MLflow and Prefect servers): tests/team_stack.py
pytest_plugins = ["team_stack"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures" / "real"


@pytest.fixture(scope="session")
def real_fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"real fixtures not found at {FIXTURES}: clone the project beside its shared/ folder")
    return FIXTURES


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


# ------------------------------------------------------------------------------------------------
# settings


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def params_dict(override: dict | None = None) -> dict:
    """The project's params.yaml with ``override`` merged in (nested mappings merge key by key)."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    return deep_merge(raw, override or {})


def make_params(override: dict | None = None):
    from pipeline.params import parse_params

    return parse_params(params_dict(override))


def write_project_params(root: Path, override: dict | None = None) -> Path:
    path = Path(root) / "params.yaml"
    path.write_text(yaml.safe_dump(params_dict(override), sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------
# models and data


def tiny_config(**kw):
    """A few-channel GauGAN: 4 classes, widths 4, 64 px, two-layer discriminators."""
    from gaugan.config import GauGANConfig

    base = dict(label_nc=4, ngf=4, ndf=4, nef=4, z_dim=8, spade_hidden=8, n_layers_D=2, crop_size=64)
    return GauGANConfig(**{**base, **kw})


def random_batch(cfg, b: int = 2, seed: int = 0) -> dict:
    """``b`` random 64x64 label maps and images in [-1, 1] (and sparse edges when ``cfg`` uses instances)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, cfg.label_nc, (b, 64, 64), generator=g)
    batch = {"label": label, "image": torch.rand(b, 3, 64, 64, generator=g) * 2 - 1}
    if cfg.use_instance:
        batch["edge"] = (torch.rand(b, 1, 64, 64, generator=g) > 0.9).float()
    return batch


def train_options(**kw):
    """Trainer options without the VGG loss (no VGG19 weights in tests), ``kw`` overriding."""
    from gaugan.trainer import TrainOptions

    return TrainOptions(**{"lambda_vgg": 0.0, **kw})


def trainer_weights(trainer) -> dict:
    """Every parameter of G (with E) and D, copied (not the spectral-norm vectors or BN statistics)."""
    named = list(trainer.generator.named_parameters(prefix="G")) + list(
        trainer.discriminator.named_parameters(prefix="D")
    )
    return {k: v.detach().clone() for k, v in named}


TOY_SIZE = 32
TOY_COLORS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (220, 220, 40)]
TOY_NAMES = ("sky", "grass", "water", "sand")


def toy_classes(names=TOY_NAMES, dataset: str = "toy", has_instances: bool = True):
    from gaugan.classes import ClassTable

    colors = tuple(TOY_COLORS[i % len(TOY_COLORS)] for i in range(len(names)))
    return ClassTable(dataset=dataset, names=tuple(names), colors=colors, has_instances=has_instances)


def write_toy_prepared(root: Path, n_train: int = 16, n_val: int = 6, seed: int = 0, names=TOY_NAMES) -> Path:
    """A prepared dataset written directly in the format of gaugan.data: manifest, classes.json, PNGs.

    Images are class colours plus noise, so a small segmenter can learn them; each label map has a
    row of dontcare (255) pixels; instance ids are the class + 1.
    """
    import pandas as pd
    from PIL import Image

    from pipeline.io import atomic_write_json

    rng = np.random.default_rng(seed)
    label_nc = len(names)
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            label = np.full((TOY_SIZE, TOY_SIZE), rng.integers(0, label_nc), np.uint8)
            for _ in range(3):
                y, x = rng.integers(0, TOY_SIZE - 8, 2)
                h, w = rng.integers(6, TOY_SIZE // 2, 2)
                label[y : y + h, x : x + w] = rng.integers(0, label_nc)
            label[rng.integers(0, TOY_SIZE), :] = 255
            colors = np.asarray(TOY_COLORS, np.float64)[np.minimum(label, label_nc - 1) % len(TOY_COLORS)]
            image = colors + rng.normal(0, 20, (TOY_SIZE, TOY_SIZE, 3))
            instance = ((label.astype(np.int32) + 1) * (label != 255)).astype(np.uint16)
            sid = f"{split}-{i:03d}"
            rel = {k: f"{k}s/{split}/{sid}.png" for k in ("image", "label", "instance")}
            arrays = {"image": np.clip(image, 0, 255).astype(np.uint8), "label": label, "instance": instance}
            for key, arr in arrays.items():
                (root / rel[key]).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / rel[key])
            rows.append(
                {
                    "id": sid,
                    "split": split,
                    **rel,
                    "edge": None,
                    "width": TOY_SIZE,
                    "height": TOY_SIZE,
                    "source": "test",
                    "source_hash": f"{seed}-{sid}",
                }
            )
    columns = ["id", "split", "image", "label", "instance", "edge", "width", "height", "source", "source_hash"]
    pd.DataFrame(rows, columns=columns).to_parquet(root / "manifest.parquet", index=False)
    atomic_write_json(root / "classes.json", toy_classes(names).to_dict())
    return root


def write_tiny_generator(
    path: Path, classes, seed: int = 0, crop_size: int = TOY_SIZE, meta: dict | None = None, **model
) -> Path:
    """A randomly initialised SPADE generator (and encoder, with use_vae) saved as the train stage saves it."""
    import torch

    from gaugan.checkpoint import save_generator
    from gaugan.config import GauGANConfig
    from gaugan.encoder import ConvEncoder
    from gaugan.generator import SPADEGenerator

    settings = dict(ngf=4, z_dim=8, spade_hidden=8, use_instance=True)  # batch-norm SPADE: eval uses running stats
    settings.update(model)
    config = GauGANConfig(label_nc=classes.label_nc, crop_size=crop_size, **settings)
    torch.manual_seed(seed)
    netG = SPADEGenerator(config)
    netE = ConvEncoder(config) if config.use_vae else None
    save_generator(path, netG, netE, config, classes, meta if meta is not None else {"steps": 0})
    return path


def ingest_dataset(fmt: str, source: Path, out: Path, **data) -> dict:
    """Prepare ``source`` (format ``fmt``) into ``out`` with the project's data settings and ``data``
    overrides (e.g. ``workers=2``, ``on_error="skip"``, ``demo={...}``); returns the stats."""
    from pipeline.datasets import prepare

    settings = make_params({"data": {"format": fmt, **data}}).data
    return prepare(settings, Path(source), Path(out), progress=False)


def as_files(prepared: Path) -> Path:
    """``prepared`` exported beside it as one file per map (``prepared export``: the bytes its shards hold)."""
    from pipeline.datasets.prepared_files import export_files

    out = prepared.with_name(prepared.name + "-files")
    export_files(prepared, out)
    return out


def copy_project(root: Path, names) -> Path:
    """The named files and folders of this project, and its DVC config (no cache), copied into ``root``."""
    for name in names:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    shutil.copytree(REPO_ROOT / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    return root


def network_outputs(config, state: dict, semantics):
    """(images, last discriminator scores) of the trainer state's G and D on ``semantics``: networks
    compared as functions (raw weights can differ where no output depends on them)."""
    import torch

    from gaugan.discriminator import MultiscaleDiscriminator
    from gaugan.generator import SPADEGenerator

    netG, netD = SPADEGenerator(config).eval(), MultiscaleDiscriminator(config).eval()
    netG.load_state_dict(state["G"])
    netD.load_state_dict(state["D"])
    with torch.no_grad():
        fake = netG(semantics)
        return fake, netD(torch.cat([semantics, fake], 1))[0][-1]
