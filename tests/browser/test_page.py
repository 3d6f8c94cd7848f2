"""The web page in Debian's Chromium, driven by Playwright, against a live API."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import LiveServer, TinyPipeline

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Closed network here: keep Chromium from reaching out on its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI; .ci/run (make test) should have installed it")
        pytest.skip("chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def test_upload_shows_the_prediction(
    browser: object, live_api: LiveServer, tiny_pipeline: TinyPipeline, output_dir: Path
) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 800})  # type: ignore[attr-defined]
    page.goto(live_api.url + "/")
    page.wait_for_selector("#model-line:has-text('version 1')")
    # Pick a test digit that the model gets right, so the check is about the page.
    path, label = next(
        (p, lbl) for p, lbl in tiny_pipeline.test_images() if _api_label(live_api, p) == lbl
    )
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#result:not([hidden])", timeout=10_000)
    assert page.inner_text("#top-label") == label
    assert page.locator("#bars li").count() == 10
    assert "%" in page.inner_text("#top-confidence")
    page.screenshot(path=str(output_dir / "prediction.png"), full_page=True)


def test_text_file_shows_an_error(
    browser: object, live_api: LiveServer, tmp_path: Path, output_dir: Path
) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(live_api.url + "/")
    note = tmp_path / "note.png"
    note.write_text("this is not an image")
    page.set_input_files("#file-input", str(note))
    page.wait_for_selector("#status.error", timeout=10_000)
    assert "not an image" in page.inner_text("#status")
    page.screenshot(path=str(output_dir / "error.png"))


def _api_label(server: LiveServer, path: Path) -> str:
    import httpx

    response = httpx.post(
        f"{server.url}/v1/predict", files={"file": (path.name, path.read_bytes())}
    )
    return str(response.json()["label"])
