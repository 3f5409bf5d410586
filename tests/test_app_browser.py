"""The painting page in a real browser: Debian's Chromium, headless, driven by Playwright.

Open the page, pick classes, paint a stroke and a fill, generate: the image shown is the API's own
for the same label map and seed. Then ask for two styles, upload a colour-coded map, and upload a
broken file, whose error shows on the page. Screenshots go to the test's folder and to
/tmp/app-screens/ (for a person to look at). Without /usr/bin/chromium the test fails under CI
(CI=true: .ci/run installs it) and is skipped elsewhere, saying so.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_server import NAME, SIZE, app_registry, app_server  # noqa: F401 (fixtures)
from conftest import toy_classes
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENS = Path("/tmp/app-screens")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found: apt-get install -y chromium (.ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"  # only the system browser, never a download
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield chromium
        chromium.close()


class Shots:
    def __init__(self, folder: Path):
        self.folder = folder
        SCREENS.mkdir(exist_ok=True)

    def __call__(self, page, name: str) -> None:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, SCREENS / path.name)


def shown_images(page) -> list[np.ndarray]:
    sources = page.eval_on_selector_all("#results img.result", "els => els.map(e => e.src)")
    return [np.array(Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))) for s in sources]


def page_labels(page) -> np.ndarray:
    values = page.evaluate("Array.from(S.label)")
    return np.asarray(values, np.uint8).reshape(SIZE, SIZE)


def settle(page) -> None:
    """Wait until no generation is due or in flight and the latest one is shown."""
    page.wait_for_function("S.timer === null && S.done === S.genId")


def generate(page) -> None:
    settle(page)
    before = page.evaluate("S.genId")
    page.click("#generate")
    page.wait_for_function(f"S.genId > {before}")
    settle(page)
    assert page.is_hidden("#error"), page.text_content("#error")


def stroke(page, points) -> None:
    box = page.locator("#label-canvas").bounding_box()
    scale = box["width"] / SIZE
    xy = [(box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale) for x, y in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for p in xy[1:]:
        page.mouse.move(*p, steps=4)
    page.mouse.up()


def pick(page, name: str, by_enter: bool = False) -> None:
    """Choose a class through the search box: a click on the match, or Enter (the first match)."""
    page.fill("#class-search", name)
    if by_enter:
        page.press("#class-search", "Enter")
    else:
        page.click(f"#palette li:has-text('{name}')")
    page.fill("#class-search", "")
    assert name in page.text_content("#selected-class")


def api_image(server, label: np.ndarray, seed: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(label).save(buf, format="PNG")
    body = {"model": f"models:/{NAME}@champion", "label": base64.b64encode(buf.getvalue()).decode(), "seed": seed}
    out = httpx.post(f"{server.url}/api/synthesize", json=body, timeout=60).json()
    return np.array(Image.open(io.BytesIO(base64.b64decode(out["images"][0]))))


def test_paint_generate_upload_and_errors_in_a_real_browser(browser, app_server, tmp_path):
    shots = Shots(tmp_path)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(app_server.url)
    page.wait_for_selector("#results img.result")  # the first image, of the blank map, on load
    settle(page)
    assert page.input_value("#model-select") == f"models:/{NAME}@champion"
    assert page.eval_on_selector_all("#palette li", "els => els.map(e => e.textContent)")[0].startswith("water")
    assert "FID 31.50" in page.text_content("#model-info")
    assert page.text_content("#model-info").startswith("spade · dataset toy")  # the family first
    # paint: a grass stroke across the map, then fill the part below it with sand
    pick(page, "grass")
    page.select_option("#brush-size", "4")
    stroke(page, [(0, 30), (20, 26), (40, 34), (63, 30)])
    pick(page, "sand", by_enter=True)
    page.click("#tool-fill")
    stroke(page, [(10, 55)])
    page.fill("#seed", "11")
    generate(page)
    labels = page_labels(page)
    assert labels[30, 0] == 1 and labels[30, 63] == 1  # the stroke
    assert labels[55, 10] == 3 and labels[63, 63] == 3 and labels[5, 5] == 2  # the fill stops at the stroke
    (shown,) = shown_images(page)
    np.testing.assert_array_equal(shown, api_image(app_server, labels, seed=11))
    shots(page, "1-painted")
    # the downloads are the map: indices, and colours that read back as the same indices
    with page.expect_download() as download:
        page.click("#download-label-index")
    np.testing.assert_array_equal(np.array(Image.open(download.value.path())), labels)
    with page.expect_download() as download:
        page.click("#download-label-color")
    colours = np.array(Image.open(download.value.path()).convert("RGB"))
    np.testing.assert_array_equal(toy_classes().indices_from_colors(colours), labels)
    # two styles side by side; undo brings the map back to before the fill
    page.select_option("#n-samples", "2")
    page.wait_for_function("document.querySelectorAll('#results img.result').length === 2")
    settle(page)
    first, second = shown_images(page)
    assert not np.array_equal(first, second)
    page.click("#undo")
    assert page_labels(page)[55, 10] == 2
    shots(page, "2-two-styles")
    # upload a colour-coded map of another size: snapped to the model's size and palette
    upload = np.zeros((96, 128), np.uint8)
    upload[48:] = 1
    upload[20:40, 30:90] = 2
    Image.fromarray(toy_classes().colorize(upload)).save(tmp_path / "colours.png")
    with page.expect_response(lambda r: r.url.endswith("/api/labelmap")):
        page.set_input_files("#upload-label", str(tmp_path / "colours.png"))
    page.wait_for_function("S.label[63 * 64] === 1")
    got = page_labels(page)
    np.testing.assert_array_equal(got, upload[np.arange(SIZE) * 96 // SIZE][:, np.arange(SIZE) * 128 // SIZE])
    generate(page)
    shots(page, "3-colour-upload")
    # an instance map (the champion is trained with them): the image changes
    before = shown_images(page)[0]
    instance = np.zeros((SIZE, SIZE), np.uint16)
    instance[:, 20:44] = 300
    Image.fromarray(instance).save(tmp_path / "instance.png")
    with page.expect_response(lambda r: r.url.endswith("/api/labelmap")):
        page.set_input_files("#upload-instance", str(tmp_path / "instance.png"))
    page.wait_for_selector("#clear-instance:not([hidden])")
    generate(page)
    assert not np.array_equal(shown_images(page)[0], before)
    # a broken upload: the error is on the page, naming the file and the problem
    (tmp_path / "broken.png").write_text("this is not an image")
    page.set_input_files("#upload-label", str(tmp_path / "broken.png"))
    page.wait_for_selector("#error:not([hidden])")
    error = page.text_content("#error")
    assert "broken.png" in error and "not a readable image (no image format recognised" in error and "0x" not in error
    np.testing.assert_array_equal(page_labels(page), got)  # the map is untouched
    shots(page, "4-bad-upload")
    # a model without style noise: no seed, one sample, no instance or style uploads
    page.select_option("#model-select", f"models:/{NAME}/2")
    page.wait_for_function("S.model.uri.endsWith('/2') && S.done === S.genId && S.timer === null")
    assert page.is_disabled("#seed") and page.is_visible("#style-note") and page.is_hidden("#instance-wrap")
    assert page.is_hidden("#error") and len(shown_images(page)) == 1
    assert "FID 40.25" in page.text_content("#model-info")
    shots(page, "5-plain-model")
    page.close()
