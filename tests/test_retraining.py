"""Retraining on new data: the demo's data drop (a new class), the plan (finetune or scratch) and its
edit of params.yaml, against a real SQLite MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ingest_dataset, make_params, write_project_params
from PIL import Image

from gaugan.classes import ClassTable
from pipeline.datasets.demo import DROP_CLASSES, add_demo_drop, write_demo_source
from pipeline.errors import MissingInputError, ParamsError
from pipeline.orchestration.retraining import apply_plan, plan_retraining
from pipeline.params import load_params, override
from pipeline.parents.record import ParentRecord, describe_parent


@pytest.fixture(scope="module")
def grown(tmp_path_factory) -> tuple[Path, list[str]]:
    source = tmp_path_factory.mktemp("drop") / "demo"
    demo = make_params({"data": {"demo": {"num_train": 4, "num_val": 2, "width": 32, "height": 32}}}).data.demo
    write_demo_source(source, demo)
    val_before = {p.name: p.read_bytes() for p in sorted((source / "labels/val").iterdir())}
    names = add_demo_drop(source, demo, 3, "fence", seed=1)
    assert {p.name: p.read_bytes() for p in sorted((source / "labels/val").iterdir())} == val_before
    return source, names


def test_a_drop_adds_training_samples_and_appends_the_new_class(grown):
    source, names = grown
    assert len(names) == 3 and len(list((source / "images/train").iterdir())) == 4 + 3
    doc = json.loads((source / "classes.json").read_text())
    assert [c["name"] for c in doc["classes"]][-1] == "fence" and doc["classes"][-1]["index"] == 12
    fence_pixels = [int((np.asarray(Image.open(source / f"labels/train/{n}.png")) == 12).sum()) for n in names]
    assert fence_pixels[0] > 0 and fence_pixels[2] > 0 and fence_pixels[1] == 0  # every other sample
    inst = np.asarray(Image.open(source / f"instances/train/{names[0]}.png"))
    label = np.asarray(Image.open(source / f"labels/train/{names[0]}.png"))
    assert len(np.unique(inst[label == 12])) == 1  # the fence is one instance of its own
    assert not (np.isin(inst[label == 12], inst[label != 12])).any()


def test_the_grown_table_extends_the_old_one_when_ingested(grown, tmp_path):
    source, _ = grown
    ingest_dataset("folder", source, tmp_path / "prepared")
    table = ClassTable.load(tmp_path / "prepared")
    from pipeline.datasets.demo import class_table

    old = class_table()
    assert table.names[: len(old.names)] == old.names and table.names[-1] == "fence"
    assert table.colors[-1] == DROP_CLASSES["fence"]


def test_a_drop_twice_keeps_one_fence_class_and_other_samples(grown):
    source, names = grown
    demo = make_params({"data": {"demo": {"num_train": 4, "num_val": 2, "width": 32, "height": 32}}}).data.demo
    more = add_demo_drop(source, demo, 2, "fence", seed=2)
    assert not set(more) & set(names)
    names_in_table = [c["name"] for c in json.loads((source / "classes.json").read_text())["classes"]]
    assert names_in_table.count("fence") == 1


def test_a_drop_needs_a_source_and_a_known_class(tmp_path):
    demo = make_params().data.demo
    with pytest.raises(MissingInputError, match="classes.json"):
        add_demo_drop(tmp_path / "nothing", demo, 1)
    write_demo_source(tmp_path / "demo", demo.model_copy(update={"num_train": 1, "num_val": 1}))
    with pytest.raises(ParamsError, match="fence"):
        add_demo_drop(tmp_path / "demo", demo, 1, "dragon")


def _register_champion(uri: str, name: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(uri)
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source="file:///nowhere")
    client.set_registered_model_alias(name, "champion", version.version)


def test_the_plan_finetunes_the_champion_and_writes_params_keeping_comments(tmp_path, repo_root):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / "params.yaml"
    text = (repo_root / "params.yaml").read_text()
    path.write_text(text.replace("  tracking_uri: null ", f"  tracking_uri: {uri} ", 1))
    params = load_params(path)
    assert params.mlflow.tracking_uri == uri
    params = override(params, {"register.model_name": "gaugan-x"})

    plan = plan_retraining(params, tmp_path)  # no registered model yet
    assert plan.mode == "scratch" and plan.init_from is None and "no champion" in plan.why

    _register_champion(uri, "gaugan-x")
    plan = apply_plan(path, plan_retraining(params, tmp_path))
    # the champion pinned: the version it points at now, so the commit of these params names one parent
    assert plan.mode == "finetune" and plan.init_from == "models:/gaugan-x/1"
    assert plan.pinned_from == "models:/gaugan-x@champion"
    written = load_params(path)
    r = params.retrain
    assert written.train.init_from == "models:/gaugan-x/1"
    assert (written.train.max_steps, written.train.decay_start_step) == (r.finetune_steps, r.finetune_decay_start_step)
    assert any(line.startswith("train.init_from: None -> models:/gaugan-x/1") for line in plan.changed)
    edited = path.read_text()
    assert len(edited.splitlines()) == len(text.splitlines())  # the comments of params.yaml survive the edit
    assert "# training steps (one step" in edited and "  classes: null " in edited
    line = next(x for x in edited.splitlines() if x.startswith("  init_from:"))
    assert "# pinned from models:/gaugan-x@champion by a retraining; start from a parent" in line

    again = apply_plan(path, plan_retraining(override(written, {"register.model_name": "gaugan-x"}), tmp_path))
    assert again.changed == []  # the same plan twice: nothing moves
    assert path.read_text() == edited  # not even the note

    _register_champion(uri, "gaugan-x")  # the alias moves to version 2: the next plan pins that one
    moved = apply_plan(path, plan_retraining(override(written, {"register.model_name": "gaugan-x"}), tmp_path))
    assert moved.init_from == "models:/gaugan-x/2" and moved.changed == [
        "train.init_from: models:/gaugan-x/1 -> models:/gaugan-x/2"
    ]
    assert path.read_text().count("pinned from") == 1


def test_scratch_mode_trains_from_step_0_with_the_scratch_schedule(tmp_path):
    path = write_project_params(
        tmp_path, {"retrain": {"mode": "scratch"}, "train": {"init_from": "models:/m@champion"}}
    )
    plan = apply_plan(path, plan_retraining(load_params(path), tmp_path))
    written = load_params(path)
    assert plan.mode == "scratch" and written.train.init_from is None
    assert written.train.max_steps == written.retrain.scratch_steps


def test_an_invalid_edit_is_refused_and_the_file_kept(tmp_path):
    path = write_project_params(tmp_path, {"retrain": {"finetune_steps": 10, "finetune_decay_start_step": 5}})
    raw = yaml.safe_load(path.read_text())
    raw["train"]["decay_start_step"] = 5
    raw["retrain"]["finetune_decay_start_step"] = 5
    path.write_text(yaml.safe_dump(raw))
    before = path.read_bytes()
    plan = plan_retraining(load_params(path), tmp_path)
    plan.settings["train.max_steps"] = 0  # a value params.yaml refuses
    with pytest.raises(ParamsError, match="max_steps"):
        apply_plan(path, plan)
    assert path.read_bytes() == before


def test_the_parent_is_described_in_one_line():
    assert describe_parent(None) == "step 0 (no parent model)"
    line = describe_parent(ParentRecord("models:/m@champion", "registry", name="m", version=3, run_id="r1"))
    assert "version 3 of m" in line and "run r1" in line


def test_a_drop_with_a_new_class_prepares_only_the_new_samples_and_keeps_the_old_shards(tmp_path):
    demo = make_params({"data": {"demo": {"num_train": 4, "num_val": 2, "width": 32, "height": 32}}}).data.demo
    write_demo_source(tmp_path / "demo", demo)
    ingest_dataset("folder", tmp_path / "demo", tmp_path / "prepared")
    shards_before = {p.name: p.read_bytes() for p in (tmp_path / "prepared/shards").iterdir()}
    add_demo_drop(tmp_path / "demo", demo, 2, "fence", seed=3)
    stats = ingest_dataset("folder", tmp_path / "demo", tmp_path / "prepared")
    assert stats["processed_this_run"] == 2  # the appended class leaves every old label valid: reused
    after = {p.name: p.read_bytes() for p in (tmp_path / "prepared/shards").iterdir()}
    assert all(after[name] == data for name, data in shards_before.items())  # old shards byte for byte
    assert len(after) > len(shards_before) and ClassTable.load(tmp_path / "prepared").label_nc == 13
