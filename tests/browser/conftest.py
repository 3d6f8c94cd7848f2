"""Browser fixtures: Debian's Chromium driven by Playwright, pages that record their errors."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import RunningApi, TinyPipeline

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
DESKTOP = {"width": 1200, "height": 900}
# Failed requests are logged by Chromium as console errors; the tests that cause them on
# purpose (404s aside, which the page never makes) check the page's own message instead.
EXPECTED_CONSOLE = ("Failed to load resource",)


# Module scope, not session: while Playwright's sync API is open it keeps an asyncio
# loop running on the main thread, and later tests' `asyncio.run` (the collector) fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI; .ci/run (make test) should have installed it")
        pytest.skip("chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@dataclass
class PageErrors:
    """Script errors and console errors (CSP violations included) seen by a page."""

    messages: list[str] = field(default_factory=list)


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """Open a page in a fresh context; the test fails if the page logged an error."""
    contexts: list[Any] = []
    errors = PageErrors()

    def opener(
        url: str,
        viewport: dict[str, int] | None = None,
        before_load: Callable[[Any], None] | None = None,
        **context_args: Any,
    ) -> Any:
        # Reduced motion: screenshots show the bars at their final length.
        context_args.setdefault("reduced_motion", "reduce")
        context = browser.new_context(viewport=viewport or DESKTOP, **context_args)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.on("pageerror", lambda exc: errors.messages.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda msg: (
                errors.messages.append(f"console: {msg.text}")
                if msg.type == "error" and not msg.text.startswith(EXPECTED_CONSOLE)
                else None
            ),
        )
        if before_load is not None:
            before_load(page)
        page.goto(url)
        return page

    yield opener
    for context in contexts:
        context.close()
    assert not errors.messages, "the page logged errors:\n" + "\n".join(errors.messages)


@pytest.fixture(scope="session")
def known_digit(live_api: RunningApi, tiny_pipeline: TinyPipeline) -> tuple[Path, str]:
    """A test-split digit image the tiny model classifies correctly, and its label."""
    for path, label in tiny_pipeline.test_images():
        response = httpx.post(
            f"{live_api.url}/v1/predict", files={"file": (path.name, path.read_bytes())}
        )
        if response.json()["label"] == label:
            return path, label
    raise AssertionError("the tiny model classifies no test image correctly")
