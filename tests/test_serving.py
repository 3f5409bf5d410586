"""``mlflow models serve`` of a registered model, as a real process on a loopback port.

``/invocations`` answers a label map with the same pixels as the pyfunc loaded in Python, and bad
input reaches the client as a 400 whose message names the problem, without a stack trace.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_server import NAME, SIZE, app_registry, free_port, stop  # noqa: F401 (fixture)
from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def served(app_registry, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MLFLOW_TRACKING_URI": app_registry.uri}
    # mlflow's local serving runs `uvicorn` from PATH: this interpreter's scripts first, as in an activated venv
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{NAME}@challenger",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/ping", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve did not answer within 180 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)


def invoke(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/invocations", json=body, timeout=60)


def test_invocations_answer_with_the_pyfuncs_pixels(served, app_registry):
    import mlflow

    labels = np.zeros((1, SIZE, 48), np.int64)
    labels[:, 30:] = 1
    labels[:, :10, :10] = 255
    response = invoke(served, {"inputs": {"label": labels.tolist()}, "params": {"seed": 3}})
    assert response.status_code == 200, response.text
    images = np.asarray(response.json()["predictions"], np.uint8)
    assert images.shape == (1, SIZE, 48, 3)
    mlflow.set_tracking_uri(app_registry.uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@challenger", model_config={"device": "cpu"})
    np.testing.assert_array_equal(images, model.predict({"label": labels}))


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"inputs": {"label": [[[0, 7], [9, 1]]]}}, "label values 7, 9 are outside the class table of 'toy'"),
        ({"inputs": {"label": [[0, 1], [1, 0]]}}, "does not match expected shape (-1, -1, -1)"),
    ],
    ids=["unknown-class", "wrong-shape"],
)
def test_bad_input_is_a_400_naming_the_problem(served, body, fragment):
    response = invoke(served, body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert fragment in error["message"] and "stack_trace" not in error
    assert "Traceback" not in response.text
