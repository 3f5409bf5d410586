"""The register stage and synthesize against a real SQLite MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from gaugan.checkpoint import save_generator
from gaugan.config import GauGANConfig
from gaugan.generator import SPADEGenerator
from pipeline.params import load_params
from pipeline.tracking import RunRef, ensure_experiment, write_run_ref

CLASSES = {"format_version": 1, "dataset": "toy", "label_nc": 4, "dontcare": 255, "contain_dontcare_label": True,
           "has_instances": True, "classes": [{"index": i, "name": f"c{i}", "color": [60 * i, 0, 0]} for i in range(4)]}


def _train_run(project: Path, fid: float, seed: int) -> None:
    """What train + evaluate leave behind: a generator file, run.json, metrics.json."""
    import mlflow

    uri = f"sqlite:///{project / 'mlflow.db'}"
    exp = ensure_experiment("gaugan-toy", uri)
    with mlflow.start_run(experiment_id=exp) as run:
        run_id = run.info.run_id
    write_run_ref(project / "outputs/train/run.json", RunRef(run_id, uri, "gaugan-toy"))
    cfg = GauGANConfig(label_nc=4, use_instance=True, ngf=2, ndf=2, z_dim=4, spade_hidden=4, n_layers_D=2,
                       crop_size=64, norm_G="spectralspadeinstance3x3")
    torch.manual_seed(seed)
    save_generator(project / "models/generator.pt", SPADEGenerator(cfg).eval(), None, cfg, CLASSES,
                   {"run_id": run_id, "data_version": "d1", "git_commit": "abc"})
    (project / "outputs/evaluate").mkdir(parents=True, exist_ok=True)
    (project / "outputs/evaluate/metrics.json").write_text(json.dumps({"fid": fid, "miou": 0.5, "backbone": "tiny"}))


@pytest.fixture()
def project(tmp_path) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}))
    return tmp_path


def test_better_challengers_are_promoted_and_worse_ones_kept_out(project):
    import mlflow

    from pipeline.registry import run_register

    params = load_params(project / "params.yaml")
    _train_run(project, fid=50.0, seed=0)
    first = run_register(params, project)
    assert first["name"] == "gaugan-toy" and first["version"] == "1" and first["promoted"]
    _train_run(project, fid=80.0, seed=1)
    worse = run_register(params, project)
    assert worse["version"] == "2" and not worse["promoted"] and worse["champion_value_before"] == 50.0
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("gaugan-toy", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("gaugan-toy", "challenger").version) == "2"
    _train_run(project, fid=20.0, seed=2)
    better = run_register(params, project)
    assert better["promoted"] and str(client.get_model_version_by_alias("gaugan-toy", "champion").version) == "3"
    tags = client.get_model_version("gaugan-toy", "3").tags
    assert tags["metric.fid"] == "20.0" and tags["data_version"] == "d1" and tags["git_commit"] == "abc"
    assert json.loads((project / "outputs/register/registration.json").read_text())["version"] == "3"


def test_missing_metric_is_refused_and_leaves_the_registry_alone(project):
    import mlflow

    from pipeline.registry import RegistryError, run_register

    _train_run(project, fid=50.0, seed=0)
    (project / "outputs/evaluate/metrics.json").write_text(json.dumps({"miou": 0.4}))
    with pytest.raises(RegistryError, match=r"register.metric 'fid' is not a number in .*metrics.json"):
        run_register(load_params(project / "params.yaml"), project)
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert client.search_registered_models() == []


def test_synthesize_with_the_champion(project, monkeypatch):
    from pipeline.registry import run_register
    from pipeline.synthesize import synthesize

    _train_run(project, fid=50.0, seed=0)
    run_register(load_params(project / "params.yaml"), project)
    label = np.zeros((64, 96), np.uint8)
    label[:, 40:] = 2
    Image.fromarray(label).save(project / "map.png")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    out = synthesize("models:/gaugan-toy@champion", project / "map.png", project / "out.png", seed=3)
    image = np.array(Image.open(out))
    assert image.shape == (64, 96, 3) and image.std() > 0
    # the local generator file gives the same picture
    local = synthesize(str(project / "models/generator.pt"), project / "map.png", project / "local.png")
    np.testing.assert_allclose(np.array(Image.open(local)).astype(int), image.astype(int), atol=1)
    with pytest.raises(ValueError, match="cannot load models:/gaugan-toy@nope"):
        synthesize("models:/gaugan-toy@nope", project / "map.png", project / "x.png")
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(project / "bad.png")
    with pytest.raises(Exception, match="label value 9 is outside the class table"):
        synthesize(str(project / "models/generator.pt"), project / "bad.png", project / "y.png")
