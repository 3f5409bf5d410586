"""The painting app's HTTP API against a real server process and a real registry (tests/app_server.py).

The listing and model descriptions, images equal to the Synthesizer's own for the same map and
seed, samples and style images, and one test per kind of bad input: a 4xx JSON naming the problem,
never a stack trace.
"""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from app_server import MAX_UPLOAD, NAME, SIZE, app_registry, app_server  # noqa: F401 (fixtures)
from conftest import TOY_COLORS
from PIL import Image

CHAMPION = f"models:/{NAME}@champion"


def png_b64(array: np.ndarray, format: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=format)
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(b64))))


def scene(h: int = SIZE, w: int = SIZE) -> np.ndarray:
    labels = np.zeros((h, w), np.uint8)
    labels[h // 2 :] = 1
    labels[h // 3 : h // 2, : w // 2] = 2
    labels[:6, :6] = 255
    return labels


def post(server, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}/api/synthesize", json=body, timeout=60, **kw)


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback" not in response.text and 'File "' not in response.text
    return message


def test_models_lists_aliases_versions_and_their_tags(app_server):
    listing = httpx.get(f"{app_server.url}/api/models", timeout=30).json()
    assert listing["default"] == CHAMPION
    (model,) = listing["models"]
    assert model["name"] == NAME and model["aliases"] == {"champion": "1", "challenger": "2"}
    v2, v1 = model["versions"]
    assert v1 == {
        "version": "1",
        "uri": f"models:/{NAME}/1",
        "aliases": ["champion"],
        "dataset": "toy",
        "netG": "spade",
        "size": "64x64",
        "training_steps": 500.0,
        "fid": 31.5,
        "miou": 0.5,
    }
    assert v2["aliases"] == ["challenger"] and v2["fid"] == 40.25


def test_model_detail_has_classes_most_frequent_first_size_and_style(app_server):
    champion = httpx.get(f"{app_server.url}/api/models/{NAME}/champion", timeout=60).json()
    assert champion["uri"] == CHAMPION and (champion["height"], champion["width"]) == (SIZE, SIZE)
    assert champion["style"] is True and champion["use_instance"] is True and champion["dontcare"] is True
    assert [c["name"] for c in champion["classes"]] == ["sky", "grass", "water", "sand"]
    assert [c["color"] for c in champion["classes"]] == [list(c) for c in TOY_COLORS]
    assert champion["order"] == [2, 0, 1, 3]  # stats.json: water 0.6, sky 0.2, then index order
    assert champion["classes"][2]["frequency"] == 0.6
    plain = httpx.get(f"{app_server.url}/api/models/{NAME}/2", timeout=60).json()
    assert plain["style"] is False and plain["multimodal"] is False and plain["use_instance"] is False


def test_images_equal_the_synthesizers_for_the_same_map_and_seed(app_server):
    from pipeline.serving.synthesize import load_model, render

    labels = scene()
    out = post(app_server, {"label": png_b64(labels), "seed": 7, "n_samples": 3}).json()
    assert out["model"] == CHAMPION and out["seed"] == 7 and len(out["images"]) == 3
    images = [decode(b) for b in out["images"]]
    synth = load_model(str(app_server.registry.generators["1"]), device="cpu")
    expected = render(synth, labels.astype(np.int64), seed=7, n=3).images
    for got, want in zip(images, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(images[0], images[1])  # seed 7 and seed 8: two styles
    # one image as image/png; the colour-coded map gives the same pixels
    colour = app_server_colorize(labels)
    raw = post(app_server, {"label": png_b64(colour), "seed": 7}, headers={"Accept": "image/png"})
    assert raw.headers["content-type"] == "image/png" and raw.headers["x-seed"] == "7"
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(raw.content))), images[0])


def app_server_colorize(labels: np.ndarray) -> np.ndarray:
    from conftest import toy_classes

    return toy_classes().colorize(labels)


def test_style_image_and_instance_map_change_the_image(app_server):
    labels = scene()
    base = decode(post(app_server, {"label": png_b64(labels), "seed": 1}).json()["images"][0])
    photo = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    styled = post(app_server, {"label": png_b64(labels), "seed": 1, "style": png_b64(photo, "JPEG")}).json()
    assert not np.array_equal(decode(styled["images"][0]), base)
    instance = np.zeros((SIZE, SIZE), np.uint16)
    instance[10:30, 10:30] = 5
    with_inst = post(app_server, {"label": png_b64(labels), "seed": 1, "instance": png_b64(instance)}).json()
    assert not np.array_equal(decode(with_inst["images"][0]), base)


def test_an_uploaded_colour_map_becomes_indices_at_the_models_size(app_server):
    labels = scene(128, 96)
    body = {"image": png_b64(app_server_colorize(labels)), "kind": "label"}
    out = httpx.post(f"{app_server.url}/api/labelmap", json=body, timeout=60).json()
    assert (out["height"], out["width"], out["original_size"]) == (SIZE, SIZE, [128, 96])
    got = np.frombuffer(base64.b64decode(out["indices"]), np.uint8).reshape(SIZE, SIZE)
    rows, cols = np.arange(SIZE) * 128 // SIZE, np.arange(SIZE) * 96 // SIZE
    np.testing.assert_array_equal(got, labels[rows][:, cols])
    smudged = app_server_colorize(labels)
    smudged[0, :3] = (199, 41, 40)  # next to sky's (200, 40, 40)
    body = {"image": png_b64(smudged), "kind": "label", "snap": True}
    snapped = httpx.post(f"{app_server.url}/api/labelmap", json=body, timeout=60).json()
    assert np.frombuffer(base64.b64decode(snapped["indices"]), np.uint8)[0] == 0
    instance = np.zeros((128, 128), np.uint16)
    instance[:, 64:] = 700  # ids above 255 survive
    body = {"image": png_b64(instance), "kind": "instance"}
    out = httpx.post(f"{app_server.url}/api/labelmap", json=body, timeout=60).json()
    np.testing.assert_array_equal(decode(out["png"]), instance[::2, ::2])
    body = {"image": png_b64(app_server_colorize(labels)), "kind": "instance"}
    assert_error(httpx.post(f"{app_server.url}/api/labelmap", json=body, timeout=60), 400, "one channel of ids")


def test_a_map_of_another_size_follows_one_rule_in_both_endpoints(app_server):
    """A 7x300 map: /api/labelmap gives the 64x64 map the generator sees, and /api/synthesize gives
    that map's image resized to 7x300 (docs/serving.md, the size rule)."""
    thin = scene(7, 300)
    thin[:, 150:] = 3
    fitted = httpx.post(f"{app_server.url}/api/labelmap", json={"image": png_b64(thin)}, timeout=60).json()
    assert (fitted["height"], fitted["width"], fitted["original_size"]) == (SIZE, SIZE, [7, 300])
    canvas = np.frombuffer(base64.b64decode(fitted["indices"]), np.uint8).reshape(SIZE, SIZE)
    rows, cols = np.arange(SIZE) * 7 // SIZE, np.arange(SIZE) * 300 // SIZE
    np.testing.assert_array_equal(canvas, thin[rows][:, cols])
    out = post(app_server, {"label": png_b64(thin), "seed": 3}).json()
    assert (out["height"], out["width"]) == (7, 300)
    image = decode(out["images"][0])
    assert image.shape == (7, 300, 3)
    painted = decode(post(app_server, {"label": png_b64(canvas), "seed": 3}).json()["images"][0])
    shrunk = np.array(Image.fromarray(painted).resize((300, 7), Image.Resampling.BILINEAR, reducing_gap=None))
    assert np.abs(image.astype(int) - shrunk).mean() < 1  # the same picture, up to the two resampling paths


def test_unknown_colour_names_its_pixels_and_the_nearest_class(app_server):
    colour = app_server_colorize(scene())
    colour[40, 10:15] = (30, 190, 50)
    message = assert_error(post(app_server, {"label": png_b64(colour)}), 400, "(30, 190, 50) on 5 pixels")
    assert "nearest class: 1 'grass' (40, 200, 40)" in message


def test_a_class_the_model_lacks_is_named(app_server):
    labels = scene()
    labels[0, 10:12] = 9
    assert_error(post(app_server, {"label": png_b64(labels)}), 400, "label values 9 are outside", "allowed 0..3")


@pytest.mark.parametrize(
    "label,fragment",
    [
        (base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20).decode(), "not a readable image"),
        (png_b64(np.zeros((SIZE, SIZE, 3), np.uint8), "JPEG"), "must be a PNG (lossless), got JPEG"),
        ("this is not base64!", "not valid base64"),
    ],
    ids=["corrupt", "jpeg", "not-base64"],
)
def test_corrupt_or_non_png_uploads(app_server, label, fragment):
    assert_error(post(app_server, {"label": label}), 400, "the uploaded label map", fragment)
    body = {"image": label, "kind": "label"}
    assert_error(httpx.post(f"{app_server.url}/api/labelmap", json=body, timeout=30), 400, fragment)


def declared_png(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` pixels of 8-bit greyscale (no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [30000, 3000], ids=["past-pillows-bomb-limit", "past-app-max-pixels"])
def test_a_png_declaring_too_many_pixels_is_refused_before_decoding(app_server, side):
    """A decompression bomb (30000 x 30000 declared in a few hundred bytes) is a 400 naming the limit, as is
    a size past app.max_pixels, in both endpoints that take maps, and for a style image."""
    data = base64.b64encode(declared_png(side, side)).decode()
    assert len(data) < 1000
    for response in (
        post(app_server, {"label": data}),
        httpx.post(f"{app_server.url}/api/labelmap", json={"image": data, "kind": "label"}, timeout=30),
        post(app_server, {"label": png_b64(scene()), "style": data}),
    ):
        assert_error(response, 400, "over the limit of 4194304 pixels (app.max_pixels)")


def test_a_body_over_the_limit_is_refused(app_server):
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)  # ~480 kB as PNG
    body = {"label": png_b64(noise)}
    assert_error(post(app_server, body), 413, f"over the limit of {MAX_UPLOAD}", "app.max_upload_bytes")


def test_unknown_model_alias_or_version_is_404_listing_what_exists(app_server):
    labels = png_b64(scene())
    assert_error(
        post(app_server, {"label": labels, "model": f"models:/{NAME}@prod"}),
        404,
        "no alias 'prod'",
        "@champion (version 1)",
    )
    assert_error(post(app_server, {"label": labels, "model": f"models:/{NAME}/9"}), 404, "no version '9'")
    response = httpx.get(f"{app_server.url}/api/models/gaugan-nope/champion", timeout=30)
    assert_error(response, 404, "no registered model 'gaugan-nope'", "registered models: gaugan-app")
    assert_error(post(app_server, {"label": labels, "model": "/etc/passwd"}), 400, "give a registered model")


def test_samples_and_request_shape_are_checked(app_server):
    labels = png_b64(scene())
    assert_error(post(app_server, {"label": labels, "n_samples": 5}), 400, "n_samples 5 is over the limit of 4")
    plain = {"label": labels, "n_samples": 2, "model": f"models:/{NAME}/2"}
    assert_error(post(app_server, plain), 400, "no style noise (use_vae off)")
    assert_error(post(app_server, {"seed": 3}), 422, "label: Field required")
    response = httpx.post(
        f"{app_server.url}/api/synthesize",
        content=b"{not json",
        timeout=30,
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 422, "malformed request")
    style = {"label": labels, "model": f"models:/{NAME}/2", "style": png_b64(np.zeros((8, 8, 3), np.uint8))}
    assert_error(post(app_server, style), 400, "no style encoder")


def test_docs_describe_the_api(app_server):
    schema = httpx.get(f"{app_server.url}/openapi.json", timeout=30).json()
    assert {"/api/models", "/api/models/{name}/{ref}", "/api/synthesize", "/api/labelmap"} <= set(schema["paths"])
    assert httpx.get(f"{app_server.url}/docs", timeout=30).status_code == 200


def test_models_are_loaded_once_and_the_least_recently_used_dropped(app_registry):
    from pipeline.serving.app.catalog import Catalog

    catalog = Catalog(app_registry.uri, None, "cpu", cache_size=1)
    uri, first = catalog.get(None)
    assert uri == CHAMPION and catalog.get(CHAMPION)[1] is first  # the default is the champion, kept
    assert not [m for m in first.netG.modules() if m._forward_pre_hooks]  # served with spectral norm folded
    other = catalog.get(f"models:/{NAME}/2")[1]
    assert other is not first and list(catalog._cache) == [f"models:/{NAME}/2"]
    assert catalog.get(CHAMPION)[1] is not first  # dropped, so loaded again
