"""The painting app's API driven by its own OpenAPI schema (Schemathesis) and by generated images
(Hypothesis), against the real server process of tests/app_server.py.

Schemathesis makes requests of every endpoint and method from ``/openapi.json``, valid and not, and
checks each answer: no 5xx, a status the schema lists, a body that conforms to the schema for that
status, a malformed request refused. The image tests make what the schema cannot know: PNGs of
every mode and size, truncated and corrupt ones, huge declared sizes, colours outside the palette.
Every case also checks that the server's log gained no traceback. Budgets: the Hypothesis profile
("ci" in ``make test``: a fixed seed; ``make fuzz``: many more cases).
"""

from __future__ import annotations

import base64
import io
import zlib

import httpx
import numpy as np
import pytest
import schemathesis
from app_server import MAX_UPLOAD, NAME, SIZE, LogWatch, app_registry, app_server  # noqa: F401 (fixtures)
from conftest import TOY_COLORS
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.specs.openapi.checks import positive_data_acceptance

# each case is a request: 60 in make test (ci, fixed seed), a quarter of the profile's in make fuzz (1250)
SLOW_OK = settings(
    max_examples=60 if settings().max_examples <= 250 else settings().max_examples // 4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)


OPERATIONS = [
    ("GET", "/api/config"),
    ("GET", "/api/models"),
    ("GET", "/api/models/{name}/{ref}"),
    ("GET", "/api/model"),
    ("POST", "/api/labelmap"),
    ("POST", "/api/synthesize"),
]


@pytest.fixture(scope="module")
def api_schema(app_server):
    return schemathesis.openapi.from_url(f"{app_server.url}/openapi.json")


def test_fastapis_own_refusals_have_the_apis_shape(app_server):
    """A body that is not JSON (found by the negative cases: it was {"detail": ...}), an unknown path."""
    for url, kw, status in [
        ("/api/synthesize", {"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}}, 400),
        ("/api/nothing-here", {"json": {}}, 404),
    ]:
        response = httpx.post(f"{app_server.url}{url}", timeout=30, **kw)
        assert response.status_code == status and response.json()["kind"] == "RequestError", response.text


def test_the_schema_lists_every_endpoint(api_schema):
    """The cases below cover every operation the server describes (a new endpoint must be added)."""
    listed = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert listed == set(OPERATIONS)


# (Schemathesis' own pytest loader reaches into pytest internals that pytest 9 removed, so the
# operations' strategies are drawn here with Hypothesis directly; the checks are Schemathesis'.)
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
TAKES_INPUT = [op for op in OPERATIONS if op[0] == "POST"]  # any string is a valid path or query value
CASES = [(m, p, POSITIVE) for m, p in OPERATIONS] + [(m, p, NEGATIVE) for m, p in TAKES_INPUT]


@pytest.mark.parametrize("method,path,mode", CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
@given(data=st.data())
@SLOW_OK
def test_every_endpoint_answers_as_its_schema_says(api_schema, app_server, method, path, mode, data):
    case = data.draw(api_schema[path][method].as_strategy(generation_mode=mode))
    watch = LogWatch(app_server.log)
    # every check but "schema-valid data is accepted": a schema can say "a base64 string", not "a PNG
    # of the model's classes", so a valid-looking request with a bad image is rightly a 400
    response = case.call_and_validate(timeout=60, excluded_checks=[positive_data_acceptance])
    watch.assert_clean(f"{method} {path}")
    event(f"status {response.status_code}")


# ---------------------------------------------------------------------------------- generated images
MODES = ["L", "P", "1", "I;16", "RGB", "RGBA", "LA"]


def encode(array: np.ndarray, mode: str, fmt: str = "PNG") -> bytes:
    """An image of class indices (or colours, for RGB modes) in the given Pillow mode."""
    if mode == "1":
        im = Image.fromarray((array > 0).astype(np.uint8) * 255).convert("1")
    elif mode == "P":
        im = Image.fromarray(array.astype(np.uint8), "L").convert("P")
        im.putpalette([v for c in TOY_COLORS for v in c] + [0] * (768 - 3 * len(TOY_COLORS)))
    elif mode == "I;16":
        im = Image.fromarray(array.astype(np.uint16))
    elif mode in ("RGB", "RGBA", "LA"):
        colours = np.array([*TOY_COLORS, (1, 2, 3)], np.uint8)  # the last one is in no palette
        rgb = colours[np.clip(array, 0, len(colours) - 1)]
        im = Image.fromarray(rgb).convert(mode)
    else:
        im = Image.fromarray(array.astype(np.uint8))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def label_uploads(draw) -> tuple[bytes, bool]:
    """A label map upload (maybe damaged) and whether it is a good one: mode, size 1x1 up to 2048 on
    a side, values in and out of the class table, JPEG, truncated, a byte flipped, a lying header.
    Good: an undamaged PNG of indices (L, P, 16-bit) or of the class colours (RGB, RGBA), classes
    0..3 only."""
    h, w = draw(st.integers(1, 2048)), draw(st.integers(1, 2048))  # up to app.max_pixels (2048 x 2048)
    mode = draw(st.sampled_from(MODES))
    values = draw(st.sampled_from([[0, 1, 2, 3], [0, 3, 255], [0, 1, 4], [0, 9, 700], [2]]))
    stripes = np.asarray(values)[np.arange(h * w).reshape(h, w) // max(1, (h * w) // (3 * len(values))) % len(values)]
    fmt = draw(st.sampled_from(["PNG", "PNG", "PNG", "JPEG"])) if mode in ("L", "RGB") else "PNG"
    data = encode(stripes, mode, fmt)
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "header"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    elif damage == "header":
        data = lying_png(draw(st.integers(1, 60_000)), draw(st.integers(1, 60_000)))
    good = damage == "none" and fmt == "PNG" and mode in ("L", "P", "I;16", "RGB", "RGBA") and max(values) <= 3
    return data, good


def lying_png(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height (the pixels are a few compressed rows)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    rows = zlib.compress(b"\x00" * (width + 1) * min(height, 4))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def expected_shape(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.height, im.width
    except Exception:  # noqa: BLE001 (anything Pillow cannot read: the server must say 400)
        return None


def expected_status(response: httpx.Response, good: bool) -> tuple[int, ...]:
    """A good upload is answered 200 unless the body is over app.max_upload_bytes; any other may
    still be readable (a damaged byte in an ancillary chunk, a 1x1 map that misses its bad value)."""
    if good:
        return (413,) if len(response.request.content) > MAX_UPLOAD else (200,)
    return (200, 400, 413)


@given(upload=label_uploads(), kind=st.sampled_from(["label", "instance"]), snap=st.booleans())
@SLOW_OK
def test_any_upload_to_labelmap_is_a_map_of_the_models_size_or_a_4xx(app_server, upload, kind, snap):
    data, good = upload
    watch = LogWatch(app_server.log)
    body = {"image": b64(data), "kind": kind, "snap": snap}
    response = httpx.post(f"{app_server.url}/api/labelmap", json=body, timeout=120)
    watch.assert_clean("labelmap")
    event(f"status {response.status_code}")
    if kind == "label":
        assert response.status_code in expected_status(response, good), response.text
    assert response.status_code in (200, 400, 413), response.text
    if response.status_code == 200:
        out = response.json()
        assert (out["height"], out["width"]) == (SIZE, SIZE)
        assert tuple(out["original_size"]) == expected_shape(data)
    else:
        assert response.json()["error"] and "Traceback" not in response.text


@given(upload=label_uploads(), seed=st.integers(0, 2**31 - 1))
@SLOW_OK
def test_any_upload_to_synthesize_is_an_image_of_the_maps_size_or_a_4xx(app_server, upload, seed):
    data, good = upload
    watch = LogWatch(app_server.log)
    body = {"model": f"models:/{NAME}/2", "label": b64(data), "seed": seed}  # version 2: no style
    response = httpx.post(f"{app_server.url}/api/synthesize", json=body, timeout=120)
    watch.assert_clean("synthesize")
    event(f"status {response.status_code}")
    assert response.status_code in expected_status(response, good), response.text
    if response.status_code == 200:
        out = response.json()
        (image,) = out["images"]
        with Image.open(io.BytesIO(base64.b64decode(image))) as im:
            assert (im.height, im.width) == (out["height"], out["width"]) == expected_shape(data)
    else:
        assert response.json()["error"] and "Traceback" not in response.text


@st.composite
def style_uploads(draw) -> tuple[bytes, bool]:
    mode = draw(st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "CMYK", "YCbCr"]))
    h, w = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    pixels = np.random.default_rng(draw(st.integers(0, 99))).integers(0, 255, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(pixels)
    im = im.convert(mode) if mode not in ("I;16",) else Image.fromarray(pixels[..., 0].astype(np.uint16) * 250)
    fmt = "JPEG" if mode in ("CMYK", "YCbCr") or (mode in ("RGB", "L") and draw(st.booleans())) else "PNG"
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    data = buf.getvalue()
    whole = draw(st.booleans())
    return data if whole else data[: draw(st.integers(0, len(data) - 1))], whole


@given(upload=style_uploads())
@SLOW_OK
def test_any_style_image_styles_or_is_a_4xx(app_server, upload):
    """A whole image of any mode styles the picture (converted to RGB); a truncated one is a 400."""
    style, whole = upload
    watch = LogWatch(app_server.log)
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[SIZE // 2 :] = 1
    body = {"label": b64(encode(labels, "L")), "style": b64(style), "seed": 1}  # the champion: a style encoder
    response = httpx.post(f"{app_server.url}/api/synthesize", json=body, timeout=120)
    watch.assert_clean("style image")
    event(f"status {response.status_code}")
    assert response.status_code in (200, 400, 413), response.text  # 413: a noisy 300x300 PNG
