"""``train.init_from`` through the stages: resolve-parent writes the parent's folder, train starts from
it, register logs the training state with the version. Tiny networks on a 32-px toy dataset, one
SQLite MLflow store for the module.

- train writes the training state beside the (small) generator file;
- a fine-tune from a state file starts from exactly the parent's G, D, EMA and Adam moments, at
  step 0 of its own schedule, and records the parent (tags, run.json, the generator file's meta);
- from a generator file onto a grown class table: the missing D is a recorded warning;
- a registry alias is resolved once: the same folder (nothing fetched) while it stays, another
  when it moved; an alias that does not exist is refused naming what exists;
- an NVlabs checkpoint folder (written from a tiny model the way the reference saves) as parent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TOY_NAMES, deep_merge, train_options, write_project_params, write_toy_prepared

from gaugan.errors import CheckpointError
from pipeline.errors import ModelNotFoundError
from pipeline.params import load_params
from pipeline.stages import register, resolve_parent, train

NAME = "gaugan-toy"
PARAMS = {
    "seed": 1,
    "data": {"out": "data/prepared"},
    "model": {
        "ngf": 4,
        "ndf": 4,
        "nef": 4,
        "z_dim": 8,
        "spade_hidden": 8,
        "use_instance": True,
        "num_D": 2,
        "n_layers_D": 2,
    },
    "train": {
        "batch_size": 2,
        "max_steps": 2,
        "decay_start_step": 0,
        "lambda_vgg": 0.0,
        "load_size": 32,
        "crop_size": 32,
        "num_workers": 0,
        "checkpoint_every": 2,
        "log_every": 1,
        "sample_every": 100,
        "device": "cpu",
        "save_state": "full",
    },
    "register": {"model_name": NAME, "promote": "always"},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("parent")
    write_toy_prepared(root / "old", n_train=8, n_val=2)
    write_toy_prepared(root / "grown", n_train=8, n_val=2, seed=1, names=(*TOY_NAMES, "snow"))
    return root


def project(world: Path, name: str, data: str = "old", **train_settings) -> Path:
    path = world / name
    (path / "data").mkdir(parents=True)
    (path / "data/prepared").symlink_to(world / data, target_is_directory=True)
    raw = deep_merge(PARAMS, {"train": train_settings, "mlflow": {"tracking_uri": f"sqlite:///{world / 'mlflow.db'}"}})
    write_project_params(path, raw)
    return path


def run(path: Path, *stages) -> list:
    params = load_params(path / "params.yaml")
    return [stage.run(params, path) for stage in stages]


@pytest.fixture(scope="module")
def parent(world) -> Path:
    """Trained from scratch, 1 step, with an EMA and a full training state."""
    path = project(world, "parent", max_steps=1, ema=True)
    run(path, resolve_parent, train)
    return path


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def run_tags(path: Path) -> dict:
    import mlflow

    ref = json.loads((path / "outputs/train/run.json").read_text())
    return mlflow.MlflowClient(ref["tracking_uri"]).get_run(ref["run_id"]).data.tags


def test_without_a_parent_the_record_says_none_and_train_writes_a_state_beside_the_generator(parent, world):
    assert json.loads((parent / "models/parent/parent.json").read_text()) == {"init_from": None, "kind": "none"}
    offline = project(world, "offline", init_from=None)
    raw = load_params(offline / "params.yaml").model_dump(by_alias=True)
    raw["mlflow"]["tracking_uri"] = "http://127.0.0.1:9"  # nothing listens: resolve-parent must not ask
    from pipeline.params import parse_params

    assert resolve_parent.run(parse_params(raw), offline)["kind"] == "none"
    torch.save({"weights": torch.zeros(2)}, world / "not-a-model.pt")
    bad = project(world, "bad-file", init_from=str(world / "not-a-model.pt"))
    with pytest.raises(CheckpointError, match=r"not-a-model\.pt: neither a GauGAN generator file .* nor a training"):
        run(bad, resolve_parent)
    state, generator = load(parent / "models/train_state.pt"), load(parent / "models/generator.pt")
    assert state["format"] == "gaugan-train-state/1" and generator["format"] == "gaugan-generator/1"
    assert {"G", "D", "ema", "opt_G", "opt_D", "scaler_G"} <= state.keys() and "D" not in generator
    assert state["opt_G"]["state"] and state["meta"]["save_state"] == "full" and state["meta"]["steps"] == 1
    assert (parent / "models/generator.pt").stat().st_size * 2 < (parent / "models/train_state.pt").stat().st_size
    assert run_tags(parent)["parent_kind"] == "none"


def test_a_fine_tune_from_a_state_file_starts_from_the_parents_networks_and_records_it(parent, world, monkeypatch):
    from gaugan.data import dataset_id
    from gaugan.trainer import NETWORK_PARTS, OPTIMIZER_PARTS, GauGANTrainer
    from pipeline.parents.record import ParentRecord
    from pipeline.training.settings import settings_fingerprint

    state_file = parent / "models/train_state.pt"
    child = project(world, "child", init_from=str(state_file), init_optimizer=True, ema=True)
    seen: dict = {}
    original = GauGANTrainer.train_step

    def first_step(self, batch, read=True):
        seen.setdefault("state", {**self.state_dict(NETWORK_PARTS + OPTIMIZER_PARTS), "step": self.step})
        return original(self, batch, read)

    monkeypatch.setattr(GauGANTrainer, "train_step", first_step)
    record, metrics = run(child, resolve_parent, train)
    assert record["kind"] == "file" and record["files"].keys() == {"train_state.pt"}
    expected, before = load(state_file), seen["state"]
    assert before["step"] == 0
    for net in ("G", "D", "ema"):
        assert expected[net].keys() == before[net].keys()
        assert all(torch.equal(expected[net][k], before[net][k]) for k in expected[net]), net
    for opt in ("opt_G", "opt_D"):
        a, b = expected[opt]["state"], before[opt]["state"]
        assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in ("exp_avg", "exp_avg_sq", "step")), opt
    # its own schedule from step 0: 2 steps, decaying from step 0 to 2, so step 1 runs at half the G rate
    assert metrics["steps"] == 2
    rows = (child / "outputs/train/losses.csv").read_text().splitlines()
    assert float(rows[1].split(",")[7]) == pytest.approx(0.0002 / 2 * 0.5)
    tags, meta = run_tags(child), load(child / "models/generator.pt")["meta"]
    assert tags["parent_kind"] == "file" and tags["parent_uri"] == str(state_file.resolve())
    parent_run = json.loads((parent / "outputs/train/run.json").read_text())["run_id"]
    assert tags["parent_run_id"] == meta["parent"]["run_id"] == parent_run and meta["parent"]["warnings"] == []
    # the resume checkpoint is keyed by the parent too
    params = load_params(child / "params.yaml")
    fingerprint = load(child / "runs/train/last.pt")["fingerprint"]
    data = dataset_id(child / "data/prepared")
    assert fingerprint == settings_fingerprint(params, data, ParentRecord.from_json(record).identity())
    assert fingerprint != settings_fingerprint(params, data, None)


def test_a_generator_file_onto_a_grown_class_table_records_the_missing_discriminator(parent, world):
    child = project(world, "grown-child", data="grown", init_from=str(parent / "models/generator.pt"), max_steps=1)
    run(child, resolve_parent, train)
    warning = f"{(parent / 'models/generator.pt').resolve()} has no discriminator (D): it starts from fresh weights"
    assert run_tags(child)["init_warnings"] == warning
    assert json.loads((child / "outputs/train/run.json").read_text())["parent"]["warnings"] == [warning]
    state = load(child / "models/train_state.pt")
    assert state["G"]["fc.weight"].shape[1] == 5 + 2 and state["classes"]["label_nc"] == 5


def test_a_registry_alias_is_resolved_once_and_again_only_when_it_moved(parent, world, caplog):
    import logging

    import mlflow

    (parent / "outputs/evaluate").mkdir(parents=True)
    (parent / "outputs/evaluate/metrics.json").write_text(json.dumps({"fid": 3.0}))
    first = run(parent, register)[0]
    client = mlflow.MlflowClient(f"sqlite:///{world / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(first["run_id"], "checkpoint")}
    assert logged == {"checkpoint/generator.pt", "checkpoint/train_state.pt"}

    child = project(world, "from-registry", init_from=f"models:/{NAME}@champion", max_steps=1)
    record = run(child, resolve_parent)[0]
    folder = child / "models/parent"
    assert (record["version"], record["uri"], record["run_id"]) == (
        first["version"],
        f"models:/{NAME}/1",
        first["run_id"],
    )
    sha = {n: h for n, h in record["files"].items()}
    assert sha == {
        "generator.pt": _sha(parent / "models/generator.pt"),
        "train_state.pt": _sha(parent / "models/train_state.pt"),
    }
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert run(child, resolve_parent)[0] == record  # the alias did not move: the same folder, nothing fetched
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps

    assert "moved" not in caplog.text
    second = run(parent, register)[0]  # champion moves to version 2
    with caplog.at_level(logging.WARNING, logger="pipeline.parents.resolve"):
        moved = run(child, resolve_parent)[0]
    assert moved["version"] == second["version"] == 2 and moved != record
    said = [r.getMessage() for r in caplog.records if "moved" in r.getMessage()]
    assert len(said) == 1, said  # one line: both versions and how to pin the old one
    assert "from version 1" in said[0] and "to version 2" in said[0]
    assert f"train.init_from: models:/{NAME}/1" in said[0]
    assert json.loads((folder / "parent.json").read_text())["uri"] == f"models:/{NAME}/2"

    run(child, train)
    tags = run_tags(child)
    assert (tags["parent_version"], tags["parent_uri"], tags["parent_run_id"]) == (
        "2",
        f"models:/{NAME}/2",
        first["run_id"],
    )
    missing = project(world, "no-alias", init_from=f"models:/{NAME}@nope")
    with pytest.raises(ModelNotFoundError, match=r"has no alias 'nope'; its aliases: @challenger \(version 2\)"):
        run(missing, resolve_parent)


def _sha(path: Path) -> str:
    from pipeline.io import sha256_file

    return sha256_file(path)


def test_an_nvlabs_checkpoint_folder_of_any_crop_size_is_a_parent(tmp_path):
    from dataclasses import replace

    from test_reference_import import narrow, reference_folder, write_opt_txt

    from gaugan.parent import start_from_parent
    from gaugan.trainer import GauGANTrainer
    from pipeline.datasets.class_tables import builtin_table
    from pipeline.parents.record import ParentRecord
    from pipeline.parents.resolve import resolve_parent as resolve
    from pipeline.training.parent import load_parent_model

    config = replace(narrow("coco-stuff"), crop_size=64, n_layers_D=2)
    nets = reference_folder(tmp_path / "coco_64", config, "coco-stuff")
    write_opt_txt(tmp_path / "coco_64/opt.txt", "coco-stuff", config, crop_size=64, load_size=72)
    record = resolve("coco_64", tmp_path / "parent", None, tmp_path).to_json()
    assert record["kind"] == "reference" and list(record["files"]) == ["train_state.pt"]
    assert sorted(record["sources"]) == ["latest_net_D.pth", "latest_net_G.pth", "opt.txt"]
    again = resolve("coco_64", tmp_path / "parent", None, tmp_path).to_json()
    assert again == record  # converted again: the same bytes
    parent = load_parent_model(tmp_path / "parent", ParentRecord.load(tmp_path / "parent", "coco_64"))
    assert parent.config.crop_size == 64 and parent.config.ndf == 4 and parent.config.n_layers_D == 2
    classes = builtin_table("coco-stuff")
    torch.manual_seed(3)
    trainer = GauGANTrainer(config, train_options())
    assert start_from_parent(trainer, parent, classes) == []
    for mine, theirs in ((trainer.netG, nets["G"]), (trainer.netD, nets["D"])):
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # an official G-only checkpoint: D starts fresh, and the warning says so
    (tmp_path / "coco_64/latest_net_D.pth").unlink()
    shutil.rmtree(tmp_path / "parent")
    resolve("coco_64", tmp_path / "parent", None, tmp_path)
    parent = load_parent_model(tmp_path / "parent", ParentRecord.load(tmp_path / "parent", "coco_64"))
    warnings = start_from_parent(GauGANTrainer(config, train_options()), parent, classes)
    assert len(warnings) == 1 and "has no discriminator (D): it starts from fresh weights" in warnings[0]
