"""Session fixtures of the app tests: a real registry with two tiny models, and the app serving it.

``app_registry``: a SQLite MLflow store in a temporary folder with ``gaugan-app`` version 1
(multimodal, instance maps, style encoder: ``@champion``) and version 2 (plain: ``@challenger``),
registered as the register stage does (pyfunc model, tags), plus a prepared dataset's
``classes.json`` and ``stats.json`` whose frequencies put class 2 ("water") first.
``app_server``: ``gaugan-pipeline app`` on a loopback port in its own process, stopped by its pid.
Import the fixtures into a test module with ``from app_server import app_registry, app_server``.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO_ROOT, toy_classes, write_project_params, write_tiny_generator

from bench.servers import free_port, launch_app, stop  # noqa: F401 (stop and free_port: for the test modules)

NAME = "gaugan-app"
SIZE = 64
MAX_UPLOAD = 300_000  # app.max_upload_bytes of the test server
FREQUENCY = {"0": 0.2, "1": 0.1, "2": 0.6, "3": 0.1}  # water, sky, grass, sand


@dataclass
class Registry:
    root: Path
    uri: str
    generators: dict[str, Path]  # version -> the generator file it was made from


@dataclass
class Server:
    url: str
    registry: Registry
    log: Path


class LogWatch:
    """The server log's new text since the last look: a traceback there fails the case."""

    def __init__(self, log: Path):
        self.path = log
        self.seen = self.path.stat().st_size

    def assert_clean(self, what: str) -> None:
        with self.path.open("rb") as log:
            log.seek(self.seen)
            raw = log.read()
        self.seen += len(raw)
        new = raw.decode(errors="replace")
        assert "Traceback" not in new and "Exception in ASGI" not in new, f"{what}: the server logged\n{new}"


def _register(client, uri: str, generator: Path, tags: dict, alias: str):
    import mlflow

    from pipeline.registry.pyfunc import log_generator_model
    from pipeline.tracking import ensure_experiment

    mlflow.set_tracking_uri(uri)
    experiment = ensure_experiment("gaugan-app", uri)  # artifacts beside the store, not in the working folder
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_generator_model(generator, _config(generator))
    version = client.create_model_version(NAME, source=info.model_uri, run_id=run.info.run_id, tags=tags)
    client.set_registered_model_alias(NAME, alias, version.version)
    return version


def _config(generator: Path):
    from gaugan.checkpoint import load_generator

    return load_generator(generator).config


# The fixtures are imported into several test modules, and pytest keeps a session fixture per module
# that imports it: the registry and the server are made once per test session here instead.
_SHARED: dict[str, object] = {}


@pytest.fixture(scope="session")
def app_registry(tmp_path_factory) -> Registry:
    if "registry" not in _SHARED:
        _SHARED["registry"] = build_registry(tmp_path_factory)
    return _SHARED["registry"]  # type: ignore[return-value]


def build_registry(tmp_path_factory) -> Registry:
    import mlflow

    root = tmp_path_factory.mktemp("app-registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    classes = toy_classes()
    prepared = root / "prepared"
    prepared.mkdir()
    (prepared / "classes.json").write_text(json.dumps(classes.to_dict()))
    (prepared / "stats.json").write_text(json.dumps({"class_pixel_frequency": {"train": FREQUENCY}}))
    gens = {
        "1": write_tiny_generator(
            root / "vae.pt", classes, seed=1, crop_size=SIZE, use_vae=True, nef=4, meta={"steps": 500}
        ),
        "2": write_tiny_generator(
            root / "plain.pt", classes, seed=2, crop_size=SIZE, use_instance=False, meta={"steps": 300}
        ),
    }
    client = mlflow.MlflowClient(uri)
    client.create_registered_model(NAME, tags={"dataset": "toy"})
    for version, alias, fid, steps in (("1", "champion", 31.5, 500), ("2", "challenger", 40.25, 300)):
        tags = {
            "dataset": "toy",
            "netG": "spade",
            "eval_resolution": "64x64",
            "training_steps": str(steps),
            "metric.fid": str(fid),
            "metric.miou": "0.5",
        }
        _register(client, uri, gens[version], tags, alias)
    return Registry(root, uri, gens)


@pytest.fixture(scope="session")
def app_server(app_registry, tmp_path_factory, pytestconfig) -> Server:
    """``gaugan-pipeline app`` in its own process (its own session), ended by its pid when the tests end."""
    if "server" not in _SHARED:
        proc, server = start_server(app_registry, tmp_path_factory)
        pytestconfig.add_cleanup(lambda: stop(proc))
        _SHARED["server"] = server
    return _SHARED["server"]  # type: ignore[return-value]


def start_server(app_registry: Registry, tmp_path_factory) -> tuple[subprocess.Popen, Server]:
    work = tmp_path_factory.mktemp("app-server")
    port = free_port()
    params = write_project_params(
        work,
        {
            "mlflow": {"tracking_uri": app_registry.uri},
            "data": {"out": str(app_registry.root / "prepared")},
            "app": {"port": port, "max_upload_bytes": MAX_UPLOAD, "debounce_ms": 50, "device": "cpu"},
        },
    )
    log = work / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MLFLOW_TRACKING_URI": app_registry.uri}
    try:
        proc = launch_app(params, port, work, env, log)
    except RuntimeError as err:
        pytest.fail(str(err))
    return proc, Server(f"http://127.0.0.1:{port}", app_registry, log)
