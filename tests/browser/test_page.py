"""The web page in Debian's Chromium, driven by Playwright, against a live API.

Every test saves a screenshot under test-output/<test name>/ so a person can look.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support import REPO, RunningApi, TinyPipeline, launch_api

pytestmark = [pytest.mark.browser, pytest.mark.integration]

STATIC = REPO / "src/frontend/public"
PHONE = {"width": 360, "height": 740}
Opener = Callable[..., Any]


def wait_until_ready(page: Any) -> None:
    """Wait until the page has read the model card from the API."""
    page.wait_for_selector("#server-state[data-state='ready']")
    page.wait_for_selector("#model-facts:not([hidden])")


def predict_requests(page: Any) -> list[str]:
    """Record every request the page sends to the prediction route."""
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if "/v1/predict" in r.url else None)
    return seen


def bar_values(page: Any) -> list[float]:
    texts = page.locator("#bars .bar-value").all_inner_texts()
    return [0.0 if t.startswith("<") else float(t.rstrip("%")) for t in texts]


def test_upload_shows_the_prediction_and_the_model_card(
    open_page: Opener,
    live_api: RunningApi,
    tiny_pipeline: TinyPipeline,
    known_digit: tuple[Path, str],
    output_dir: Path,
) -> None:
    page = open_page(live_api.url + "/")
    wait_until_ready(page)
    assert "digits-cnn v1 ready" in page.inner_text("#server-state")
    lineage = json.loads((tiny_pipeline.models / "digits-cnn/1/lineage.json").read_text())
    card = page.inner_text("#model-facts")
    for fact in ("Version", "Test accuracy", "Macro F1", "Data version", "Trained", "Input"):
        assert fact in card
    assert lineage["data_hash"][:12] in card
    assert "16×16 grayscale" in card
    assert page.locator("#optimization").is_hidden()

    path, label = known_digit
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#result:not([hidden])")
    assert page.inner_text("#top-label") == label
    assert page.locator("#bars li").count() == 10
    values = bar_values(page)
    assert values == sorted(values, reverse=True)
    assert page.inner_text("#bars li.top .bar-label") == label
    assert page.inner_text("#top-confidence").endswith("% confident")
    assert "ms round trip" in page.inner_text("#result-meta")
    assert page.inner_text("#announcer").startswith(f"Prediction: {label},")
    page.screenshot(path=str(output_dir / "prediction.png"), full_page=True)


def test_drawing_on_the_canvas_shows_a_prediction(
    open_page: Opener, live_api: RunningApi, output_dir: Path
) -> None:
    page = open_page(live_api.url + "/")
    wait_until_ready(page)
    page.uncheck("#auto-predict")
    assert page.is_disabled("#predict-drawing")
    box = page.locator("#pad").bounding_box()
    # A zero: an ellipse, drawn with the mouse in small steps.
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    rx, ry = box["width"] * 0.22, box["height"] * 0.34
    page.mouse.move(cx + rx, cy)
    page.mouse.down()
    for step in range(1, 41):
        angle = 2 * math.pi * step / 40
        page.mouse.move(cx + rx * math.cos(angle), cy + ry * math.sin(angle))
    page.mouse.up()
    assert page.is_visible("#empty"), "with auto-predict off, only the button predicts"

    with page.expect_request("**/v1/predict"):
        page.click("#predict-drawing")
    page.wait_for_selector("#result:not([hidden])")
    # The page sent (and shows) a square image of the drawing: white ink on black.
    sent = page.evaluate(
        """() => {
          const img = document.getElementById("preview");
          const canvas = document.createElement("canvas");
          [canvas.width, canvas.height] = [img.naturalWidth, img.naturalHeight];
          const ctx = canvas.getContext("2d");
          ctx.drawImage(img, 0, 0);
          const at = (x, y) => ctx.getImageData(x, y, 1, 1).data[0];
          return {w: img.naturalWidth, h: img.naturalHeight, corner: at(1, 1),
                  ink: Math.max(...Array.from({length: 64}, (_, x) => at(x, 32)))};
        }"""
    )
    assert sent == {"w": 64, "h": 64, "corner": 0, "ink": 255}
    assert page.inner_text("#top-label") == "0", "the drawn zero, centred and scaled"
    assert page.locator("#bars li").count() == 10
    assert "your drawing" in page.inner_text("#result-meta")
    page.screenshot(path=str(output_dir / "drawing.png"), full_page=True)

    page.click("#clear-drawing")
    assert page.is_visible("#empty")
    assert page.is_disabled("#predict-drawing")
    # With auto-predict on, lifting the pen is enough.
    page.check("#auto-predict")
    page.mouse.move(cx, cy - ry)
    page.mouse.down()
    page.mouse.move(cx, cy + ry, steps=10)
    page.mouse.up()
    page.wait_for_selector("#result:not([hidden])")


def test_a_text_file_shows_an_error(
    open_page: Opener, live_api: RunningApi, tmp_path: Path, output_dir: Path
) -> None:
    page = open_page(live_api.url + "/")
    wait_until_ready(page)
    requests = predict_requests(page)

    # A text file is refused in the page, before any upload.
    note = tmp_path / "note.txt"
    note.write_text("this is not an image")
    page.set_input_files("#file-input", str(note))
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.inner_text("#error-title")
    assert "note.txt is text/plain" in page.inner_text("#error-detail")
    assert requests == []
    assert page.get_attribute("#error", "role") == "alert"

    # A text file named .png gets past the page; the API says no and the page explains.
    fake = tmp_path / "note.png"
    fake.write_text("this is not an image either")
    page.set_input_files("#file-input", str(fake))
    page.wait_for_selector("#error[data-kind='not-an-image'] >> text=the model can read")
    assert len(requests) == 1
    assert "note.png" in page.inner_text("#error-server"), "the API's own words, for details"
    assert page.locator("#retry").is_hidden(), "trying the same file again cannot help"
    assert page.locator("#result").is_hidden()
    page.screenshot(path=str(output_dir / "error.png"), full_page=True)


def test_a_file_over_the_limit_shows_an_error(
    open_page: Opener,
    tiny_pipeline: TinyPipeline,
    tmp_path: Path,
    output_dir: Path,
) -> None:
    def lower_the_page_limit(route: Any) -> None:
        response = route.fetch()
        html = response.text().replace(
            '<meta name="max-upload-bytes" content="">',
            '<meta name="max-upload-bytes" content="8000">',
        )
        assert 'content="8000"' in html
        route.fulfill(response=response, body=html)

    # A server with a 2 KB limit, so a real upload of a modest image gets a real 413,
    # and a page whose own limit (its max-upload-bytes setting) is 8 KB.
    with launch_api(
        tiny_pipeline.models,
        live=True,
        static_dir=STATIC,
        cwd=tiny_pipeline.root,
        max_upload_bytes=2000,
    ) as server:
        page = open_page(
            server.url + "/",
            before_load=lambda p: p.route(server.url + "/", lower_the_page_limit),
        )
        wait_until_ready(page)
        requests = predict_requests(page)
        assert "up to 7.8 KB" in page.inner_text("#limit-hint")

        # Over the page's own limit: refused before any upload.
        page.set_input_files(
            "#file-input",
            files=[{"name": "huge.png", "mimeType": "image/png", "buffer": b"\0" * 20_000}],
        )
        page.wait_for_selector("#error[data-kind='too-large']")
        assert "huge.png is 19.5 KB; the limit is 7.8 KB" in page.inner_text("#error-detail")
        assert requests == []

        # Under the page's limit but over the server's: the API's 413 is explained.
        photo = tmp_path / "noise.png"
        Image.effect_noise((64, 64), 80).save(photo)
        assert 2000 < photo.stat().st_size < 8000
        page.set_input_files("#file-input", str(photo))
        page.wait_for_selector("#error[data-kind='too-large'] >> text=The server says")
        assert "too big" in page.inner_text("#error-title")
        assert "smaller" in page.inner_text("#error-detail")
        assert "limit" in page.inner_text("#error-server")
        assert len(requests) == 1
        page.screenshot(path=str(output_dir / "too-big.png"), full_page=True)


def test_a_stopped_api_shows_an_unreachable_message(
    open_page: Opener,
    tiny_pipeline: TinyPipeline,
    known_digit: tuple[Path, str],
    output_dir: Path,
) -> None:
    with launch_api(
        tiny_pipeline.models, live=True, static_dir=STATIC, cwd=tiny_pipeline.root
    ) as server:
        page = open_page(server.url + "/")
        wait_until_ready(page)
    assert server.process is not None and server.process.poll() is not None

    page.set_input_files("#file-input", str(known_digit[0]))
    page.wait_for_selector("#error[data-kind='unreachable']")
    assert "Cannot reach the server" in page.inner_text("#error-title")
    assert "make serve" in page.inner_text("#error-detail")
    assert page.get_attribute("#server-state", "data-state") == "offline"
    assert "unreachable" in page.inner_text("#server-state")
    assert page.is_visible("#retry")
    page.screenshot(path=str(output_dir / "unreachable.png"), full_page=True)


@pytest.mark.parametrize("width", [PHONE["width"], 320])
def test_a_phone_sized_screen_has_no_horizontal_scroll(
    open_page: Opener,
    live_api: RunningApi,
    known_digit: tuple[Path, str],
    output_dir: Path,
    width: int,
) -> None:
    page = open_page(
        live_api.url + "/",
        viewport={"width": width, "height": PHONE["height"]},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
    )
    wait_until_ready(page)
    page.set_input_files("#file-input", str(known_digit[0]))
    page.wait_for_selector("#result:not([hidden])")
    overflow = page.evaluate(
        """() => {
          const width = document.documentElement.clientWidth;
          const wide = [...document.querySelectorAll("body *")]
            .filter((el) => el.getBoundingClientRect().right > width + 0.5)
            .filter((el) => !el.closest(".visually-hidden, .table-scroll"))
            .map((el) => el.id || el.className || el.tagName);
          return {scroll: document.documentElement.scrollWidth, width, wide};
        }"""
    )
    assert overflow["scroll"] <= overflow["width"], overflow
    assert overflow["wide"] == [], overflow
    assert overflow["width"] == width
    # The drawing pad and the verdict fit side by side with nothing cut off.
    pad = page.locator("#pad").bounding_box()
    assert pad["width"] >= 200 and pad["x"] >= 0
    page.screenshot(path=str(output_dir / f"phone-{width}.png"), full_page=True)


def test_drop_and_paste_both_classify(
    open_page: Opener, live_api: RunningApi, known_digit: tuple[Path, str], output_dir: Path
) -> None:
    page = open_page(live_api.url + "/")
    wait_until_ready(page)
    path, label = known_digit
    payload = base64.b64encode(path.read_bytes()).decode()
    make_file = """(b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const data = new DataTransfer();
      data.items.add(new File([bytes], "digit.png", {type: "image/png"}));
      return data;
    }"""
    page.evaluate(
        f"""(b64) => {{
          const data = ({make_file})(b64);
          const zone = document.getElementById("drop-zone");
          zone.dispatchEvent(new DragEvent("dragenter", {{bubbles: true, dataTransfer: data}}));
          window.__highlighted = zone.classList.contains("dragging");
          zone.dispatchEvent(new DragEvent("drop", {{bubbles: true, dataTransfer: data}}));
        }}""",
        payload,
    )
    assert page.evaluate("window.__highlighted") is True
    page.wait_for_selector("#result-meta >> text=dropped digit.png")
    assert page.inner_text("#top-label") == label
    assert "dragging" not in (page.get_attribute("#drop-zone", "class") or "")

    page.evaluate(
        f"""(b64) => document.dispatchEvent(new ClipboardEvent("paste", {{
          bubbles: true, clipboardData: ({make_file})(b64)}}))""",
        payload,
    )
    page.wait_for_selector("#result-meta >> text=pasted image")
    assert page.inner_text("#top-label") == label
    page.screenshot(path=str(output_dir / "pasted.png"), full_page=True)


def test_keyboard_and_screen_reader_use(
    open_page: Opener, live_api: RunningApi, known_digit: tuple[Path, str], output_dir: Path
) -> None:
    page = open_page(live_api.url + "/")
    wait_until_ready(page)
    # Every control has an accessible name.
    for role, name in [
        ("button", "Predict drawing"),
        ("button", "Clear"),
        ("checkbox", "Predict as I draw"),
        ("button", "choose a file"),
    ]:
        assert page.get_by_role(role, name=name).count() == 1, (role, name)
    assert page.get_by_role("img", name="Drawing pad").count() == 1

    # The file picker is reachable with Tab, and its zone shows the focus.
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "file-input":
            break
    assert page.evaluate("document.activeElement.id") == "file-input"
    outline = page.eval_on_selector("#drop-zone", "el => getComputedStyle(el).outlineStyle")
    assert outline == "solid"
    page.screenshot(path=str(output_dir / "keyboard-focus.png"))

    # Results are announced, and text meets WCAG AA contrast (4.5:1).
    page.set_input_files("#file-input", str(known_digit[0]))
    page.wait_for_selector("#result:not([hidden])")
    assert page.get_attribute("#announcer", "aria-live") == "polite"
    assert page.inner_text("#announcer").startswith("Prediction:")
    ratios = page.evaluate(
        """() => {
          const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
          const lum = (c) => {
            const [r, g, b] = rgb(c).map((v) => {
              v /= 255;
              return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
            });
            return 0.2126 * r + 0.7152 * g + 0.0722 * b;
          };
          const background = (el) => {
            for (; el; el = el.parentElement) {
              const c = getComputedStyle(el).backgroundColor;
              if (!c.startsWith("rgba(0, 0, 0, 0)") && c !== "transparent") return c;
            }
            return "rgb(255, 255, 255)";
          };
          const out = {};
          for (const sel of [".hint", ".eyebrow", ".bar-value", ".meta", ".verdict-caption",
                             ".fact dt", ".chip", ".top-label", ".file-label", "h1"]) {
            const el = document.querySelector(sel);
            const [a, b] = [lum(getComputedStyle(el).color), lum(background(el))];
            out[sel] = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
          }
          return out;
        }"""
    )
    low = {sel: round(r, 2) for sel, r in ratios.items() if r < 4.5}
    assert not low, f"contrast below 4.5:1: {low}"


def test_the_model_card_shows_the_optimization_table_when_there_is_one(
    open_page: Opener, live_api: RunningApi, output_dir: Path
) -> None:
    table = [
        {"variant": "float32", "size_bytes": 98_304, "accuracy": 0.964, "latency_ms": 0.41},
        {
            "variant": "int8",
            "size_bytes": 31_744,
            "accuracy": 0.958,
            "latency_ms": 0.22,
            "served": True,
        },
        {"variant": "student", "size_bytes": 9_000, "accuracy": 0.95, "latency_ms": 0.0066},
    ]

    def add_table(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body["metrics"]["optimization"] = table
        route.fulfill(response=response, json=body)

    page = open_page(live_api.url + "/", before_load=lambda p: p.route("**/v1/model", add_table))
    wait_until_ready(page)
    page.wait_for_selector("#optimization:not([hidden])")
    rows = page.locator("#optimization-table tbody tr")
    assert rows.count() == 3
    assert page.locator("#optimization-table thead th").all_inner_texts() == [
        "Variant",
        "Size",
        "Accuracy",
        "Latency",
        "Served",
    ]
    assert rows.nth(1).inner_text().split("\t")[:4] == ["int8", "31.0 KB", "95.8%", "0.22 ms"]
    assert "served" in (rows.nth(1).get_attribute("class") or "")
    # sub-millisecond latencies keep two significant digits, not two decimals
    assert rows.nth(2).inner_text().split("\t")[3] == "0.0066 ms"
    page.locator("#model-card").screenshot(path=str(output_dir / "model-card.png"))


@pytest.mark.parametrize(("max_bytes", "shown"), [(30 * 1024 * 1024, "30.0 MB"), (5000, "4.9 KB")])
def test_the_page_takes_the_served_models_byte_limit(
    open_page: Opener, live_api: RunningApi, max_bytes: int, shown: str
) -> None:
    """With its max-upload-bytes meta empty (the default), the page refuses and accepts
    by the limit the model was trained with (`input.max_bytes` of /v1/model)."""

    def set_limit(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body["input"]["max_bytes"] = max_bytes
        route.fulfill(response=response, json=body)

    page = open_page(live_api.url + "/", before_load=lambda p: p.route("**/v1/model", set_limit))
    wait_until_ready(page)
    assert f"up to {shown}" in page.inner_text("#limit-hint")
    requests = predict_requests(page)
    page.set_input_files(
        "#file-input",
        files=[{"name": "big.png", "mimeType": "image/png", "buffer": b"\0" * 20_000}],
    )
    if max_bytes < 20_000:
        page.wait_for_selector("#error[data-kind='too-large']")
        assert f"the limit is {shown}" in page.inner_text("#error-detail")
        assert requests == []
    else:
        page.wait_for_selector("#error[data-kind='not-an-image'], #error:not([hidden])")
        assert requests  # sent to the API, which judges the bytes
