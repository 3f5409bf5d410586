"""``mlflow models serve`` of a registered model, as a real process on a loopback port.

``/invocations`` answers a label map with the same pixels as the pyfunc loaded in Python, and bad
input reaches the client as a 400 whose message names the problem, without a stack trace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_server import NAME, SIZE, LogWatch, app_registry, free_port, stop  # noqa: F401 (fixture)
from conftest import REPO_ROOT
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def served_log(app_registry, tmp_path_factory):
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
        yield url, log
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def served(served_log):
    return served_log[0]


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


# ------------------------------------------------------------------------- generated payloads
JSON_TYPE = {"content-type": "application/json"}
JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)
ANY_JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def label_arrays(draw):
    """Nested lists shaped like label maps, of any rank 0-4 and side 0-12, values in and out of range."""
    rank = draw(st.integers(0, 4))
    shape = [draw(st.integers(0, 12)) for _ in range(rank)]
    values = draw(st.sampled_from([st.integers(0, 1), st.integers(-3, 300), st.floats(-2, 2), st.just(255)]))
    flat = draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    return np.asarray(flat, dtype=object).reshape(shape).tolist() if rank else (flat[0] if flat else 0)


@st.composite
def payloads(draw):
    """Bodies of /invocations: MLflow's formats with label maps of any shape and value, params of any
    type, unknown keys, and plain JSON of any shape."""
    kind = draw(st.sampled_from(["inputs", "inputs", "instances", "dataframe_split", "json"]))
    if kind == "json":
        return draw(ANY_JSON)
    label = draw(label_arrays())
    body = {"inputs": {"label": label}} if kind == "inputs" else {}
    if kind == "instances":
        body = {"instances": draw(st.sampled_from([[{"label": label}], label]))}
    if kind == "dataframe_split":
        body = {"dataframe_split": {"columns": ["label"], "data": [[label]]}}
    if draw(st.booleans()):
        body["params"] = draw(
            st.dictionaries(st.sampled_from(["seed", "batch_size", "other"]), JSON_LEAVES | ANY_JSON, max_size=3)
        )
    if draw(st.booleans()) and "inputs" in body:
        body["inputs"][draw(st.sampled_from(["instance", "extra"]))] = draw(label_arrays())
    return body


@given(body=payloads())
@settings(
    max_examples=100 if settings().max_examples <= 250 else settings().max_examples // 4,  # ci 100, make fuzz 1250
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_payload_is_answered_without_a_server_error(served_log, body):
    url, log = served_log
    note(f"body: {body!r}")
    watch = LogWatch(log)
    # the body as JSON text with its content type, null included (MLflow's server answers a POST with
    # no Content-Type header with its own 500: docs/serving.md)
    response = httpx.post(f"{url}/invocations", content=json.dumps(body), headers=JSON_TYPE, timeout=60)
    event(f"status {response.status_code}")
    assert response.status_code in (200, 400), response.text
    assert "Traceback" not in response.text and "stack_trace" not in response.text
    if response.status_code == 200:
        images = np.asarray(response.json()["predictions"], np.uint8)
        assert images.ndim == 4 and images.shape[-1] == 3
    watch.assert_clean("/invocations")


def test_a_body_that_is_not_json_is_a_400(served):
    """Refused by MLflow before the pyfunc sees it."""
    for content, kind in [
        (b"{label", "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"a,b\n1,2", "text/csv"),
    ]:
        response = httpx.post(f"{served}/invocations", content=content, headers={"content-type": kind}, timeout=60)
        assert response.status_code == 400, response.text
        # MLflow's own parsers put their stack trace in some 400s (CSV for a tensor signature): none of ours
        assert "/gaugan/" not in response.text and "/pipeline/" not in response.text, response.text
