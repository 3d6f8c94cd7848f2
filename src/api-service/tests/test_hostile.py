"""Hostile and unusual uploads get the right status and a JSON error, never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support import TinyPipeline, launch_api

from common.images import byte_limit_reason
from common.registry import ModelRegistry


@pytest.fixture(scope="module")
def client(tiny_pipeline: TinyPipeline) -> Iterator[TestClient]:
    with launch_api(tiny_pipeline.models, model_poll_seconds=0) as api:
        yield api.client


@pytest.fixture(scope="module")
def digit(tiny_pipeline: TinyPipeline) -> tuple[Image.Image, str]:
    """A test digit the model gets right (so a transform that breaks it shows)."""
    path, label = tiny_pipeline.test_images()[0]
    return Image.open(path).convert("L"), label


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A tiny PNG that declares width × height 1-bit pixels (all zero)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def post(client: TestClient, data: bytes, name: str = "x.png", kind: str = "image/png"):  # type: ignore[no-untyped-def]
    return client.post("/v1/predict", files={"file": (name, data, kind)})


def assert_error(response, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code
    assert "Traceback" not in response.text


def test_zero_bytes(client: TestClient) -> None:
    assert_error(post(client, b""), 422, "invalid_image")


def test_truncated_jpeg(client: TestClient, digit: tuple[Image.Image, str]) -> None:
    data = encode(digit[0].resize((256, 256)), "JPEG", quality=95)
    assert_error(post(client, data[: len(data) // 2], "x.jpg", "image/jpeg"), 422, "invalid_image")


def test_png_decompression_bomb_is_refused_from_its_header(client: TestClient) -> None:
    bomb = png_bomb()
    assert len(bomb) < 1_000_000
    assert_error(post(client, bomb, "bomb.png"), 413, "too_many_pixels")


def test_body_over_the_limit_declared(client: TestClient) -> None:
    response = post(client, b"\x89PNG\r\n\x1a\n" + b"0" * (50 * 1024 * 1024))
    assert_error(response, 413, "too_large")


def test_body_over_the_limit_while_streaming(tiny_pipeline: TinyPipeline) -> None:
    """A chunked body (no Content-Length) over the limit gets 413 too.

    The test client buffers the body; `test_live.py` checks over a real socket that
    the server stops reading at the limit.
    """

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        for _ in range(100):
            yield b"0" * 16384

    with launch_api(
        tiny_pipeline.models, max_upload_bytes=64 * 1024, model_poll_seconds=0
    ) as small:
        response = small.client.post(
            "/v1/predict",
            content=body(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
    assert_error(response, 413, "too_large")


def test_a_small_content_length_does_not_lift_the_limit_on_a_chunked_body() -> None:
    """Content-Length and Transfer-Encoding together: the body is counted as it
    streams (h11 frames such a request as chunked, so the length proves nothing)."""
    from api_service.upload_guard import UploadGuardMiddleware

    seen = bytearray()

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        while (message := await receive())["type"] == "http.request":
            seen.extend(message.get("body", b""))
            if not message.get("more_body"):
                break

    chunks = [{"type": "http.request", "body": b"0" * 1000, "more_body": True}] * 5
    sent: list[dict] = []

    async def receive() -> dict:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/predict",
        "headers": [
            (b"content-type", b"multipart/form-data; boundary=b"),
            (b"content-length", b"10"),
            (b"transfer-encoding", b"chunked"),
        ],
    }
    guard = UploadGuardMiddleware(app, max_bytes=2500, multipart_paths=frozenset({"/v1/predict"}))
    asyncio.run(guard(scope, receive, send))
    assert len(seen) <= 3000  # cut off at the first chunk past the limit
    assert sent[0]["status"] == 413


def test_text_named_png(client: TestClient) -> None:
    assert_error(post(client, b"just some text, not a picture\n"), 422, "invalid_image")


def test_cmyk_jpeg_is_classified(client: TestClient, digit: tuple[Image.Image, str]) -> None:
    cmyk = digit[0].convert("RGB").resize((64, 64)).convert("CMYK")
    response = post(client, encode(cmyk, "JPEG", quality=95), "cmyk.jpg", "image/jpeg")
    assert response.status_code == 200, response.text
    assert response.json()["label"] == digit[1]


def exif_rotated(image: Image.Image) -> bytes:
    """Pixels stored rotated, with the EXIF orientation (6) that turns them back upright."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    return encode(image.rotate(90, expand=True).convert("RGB"), "JPEG", quality=100, exif=exif)


@pytest.mark.parametrize(
    "variant",
    ["LA", "P", "I;16", "RGBA", "EXIF-rotated"],
)
def test_image_modes_give_the_same_answer(
    client: TestClient, digit: tuple[Image.Image, str], variant: str
) -> None:
    image, label = digit
    image = image.resize((64, 64))
    if variant == "I;16":
        wide = (np.asarray(image, dtype=np.uint16) * 257).astype(np.uint16)
        data = encode(Image.fromarray(wide), "PNG")  # uint16 → mode I;16
    elif variant == "EXIF-rotated":
        data = exif_rotated(image)
    else:
        data = encode(image.convert(variant), "PNG")
    response = post(client, data, f"{variant}.png")
    assert response.status_code == 200, response.text
    assert response.json()["label"] == label


def test_exif_rotation_is_applied(client: TestClient, digit: tuple[Image.Image, str]) -> None:
    """Without honouring the tag, the rotated pixels give other probabilities."""
    image = digit[0].resize((64, 64))
    upright = post(client, encode(image.convert("RGB"), "JPEG", quality=100)).json()
    tagged = post(client, exif_rotated(image)).json()
    rotated = post(client, encode(image.rotate(90).convert("RGB"), "JPEG", quality=100)).json()
    assert tagged["probabilities"][digit[1]] == pytest.approx(
        upright["probabilities"][digit[1]], abs=0.05
    )
    assert rotated["probabilities"] != tagged["probabilities"]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"%PDF-1.7\n...", "application/octet-stream"),
        (b"\x89PNG\r\n\x1a\n", "text/plain"),
        (b"8BPS\x00\x01", "image/vnd.adobe.photoshop"),
    ],
)
def test_unsupported_media_types(client: TestClient, data: bytes, kind: str) -> None:
    assert_error(post(client, data, "x.bin", kind), 415, "unsupported_media_type")


def test_request_that_is_not_multipart(client: TestClient) -> None:
    response = client.post("/v1/predict", json={"file": "aGVsbG8="})
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF
def test_random_bytes_never_give_a_500(client: TestClient) -> None:
    rng = np.random.default_rng(3)
    for prefix in (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00"):
        for size in (1, 40, 400):
            response = post(client, prefix + rng.bytes(size))
            assert response.status_code in (413, 415, 422), (prefix, size, response.text)
            assert "error" in response.json()


def _same_digit(digit: Image.Image, kind: str) -> bytes:
    """The test digit as a file of another kind that training also accepts."""
    if kind == "mpo":  # a phone camera's JPEG with an MP index
        big = digit.convert("RGB").resize((64, 64), Image.Resampling.NEAREST)
        return encode(big, "MPO", save_all=True, append_images=[big], quality=100)
    if kind == "tiff-float":  # 32-bit float, values 0-1
        values = np.asarray(digit, dtype=np.float32) / 255.0
        return encode(Image.fromarray(values, mode="F"), "TIFF")
    return encode(digit.convert("RGB"), "TIFF")


@pytest.mark.parametrize("kind", ["mpo", "tiff-float", "tiff"])
def test_kinds_training_accepts_are_served_like_the_png(
    client: TestClient, digit: tuple[Image.Image, str], kind: str
) -> None:
    # Regression: a 0-1 float TIFF was served as an all-black image.
    reference = post(client, encode(digit[0], "PNG")).json()
    response = post(client, _same_digit(digit[0], kind), f"x.{kind}", "image/jpeg")
    assert response.status_code == 200, response.text
    assert response.json()["label"] == reference["label"] == digit[1]


@pytest.mark.parametrize(
    ("data", "status", "code", "words"),
    [
        (encode(Image.new("L", (4, 4), 255), "PNG"), 422, "image_too_small", "min_size 8"),
        (
            encode(Image.fromarray(np.full((8, 8), -2.0, np.float32), mode="F"), "TIFF"),
            422,
            "invalid_image",
            "float image values run -2",
        ),
        (encode(Image.new("RGBA", (16, 16)), "ICO"), 415, "unsupported_media_type", "ICO"),
    ],
    ids=["smaller-than-min-size", "float-out-of-range", "ico"],
)
def test_kinds_training_refuses_are_refused_with_the_reason(
    client: TestClient, data: bytes, status: int, code: str, words: str
) -> None:
    response = post(client, data)
    assert_error(response, status, code)
    assert words in response.json()["error"]["message"]


# The size limits: what the served model was trained to accept (its preprocess.json).


@contextlib.contextmanager
def served_with(
    registry: ModelRegistry, tmp_path: Path, settings: dict[str, int] | None = None, **limits: int
) -> Iterator[TestClient]:
    """A client on version 1 of `registry` with `limits` recorded in its preprocess.json,
    as the processor records collect.max_bytes and collect.max_pixels."""
    spec_file = Path(registry.version_uri("1")) / "preprocess.json"
    spec_file.write_text(json.dumps({**json.loads(spec_file.read_text()), **limits}))
    with launch_api(
        registry.root,
        model_cache_dir=str(tmp_path / "cache"),
        model_poll_seconds=0,
        **(settings or {}),
    ) as api:
        yield api.client


def padded(image: Image.Image, size: int) -> bytes:
    """A valid PNG of `size` bytes: the image and trailing bytes, which decoders skip
    (as phones append previews and metadata to their photos)."""
    data = encode(image, "PNG")
    return data + bytes(size - len(data))


def test_a_file_over_the_old_api_default_is_served_when_training_took_it(
    registry_copy: ModelRegistry, tmp_path: Path, digit: tuple[Image.Image, str]
) -> None:
    # Regression: the collector took files up to 20 MiB, the API refused them over 10 MiB.
    image, label = digit
    photo = padded(image, 15 * 1024 * 1024)
    with served_with(registry_copy, tmp_path, max_bytes=20 * 1024 * 1024) as client:
        response = post(client, photo, "phone.png")
    assert response.status_code == 200, response.text
    assert response.json()["label"] == label


def test_raising_max_pixels_raises_what_the_api_accepts(
    registry_copy: ModelRegistry, tmp_path: Path
) -> None:
    big = png_bomb(7000, 6000)  # 42 Mpx: over the 40 Mpx default of collect.max_pixels
    with served_with(registry_copy, tmp_path, max_pixels=40_000_000) as client:
        assert_error(post(client, big, "big.png"), 413, "too_many_pixels")
    with served_with(registry_copy, tmp_path, max_pixels=50_000_000) as client:
        response = post(client, big, "big.png")
    assert response.status_code == 200, response.text


def test_a_file_over_the_models_limits_is_refused_with_the_collectors_reason(
    registry_copy: ModelRegistry, tmp_path: Path, digit: tuple[Image.Image, str]
) -> None:
    image = digit[0].resize((40, 30))
    with served_with(registry_copy, tmp_path, max_bytes=100_000, max_pixels=1000) as client:
        just_over = post(client, padded(image, 100_001), "a.png")
        assert_error(just_over, 413, "too_large")
        reason = byte_limit_reason(100_001, 100_000)  # the collector's words
        assert just_over.json()["error"]["message"] == f"a.png: {reason}"
        assert reason.endswith("(collect.max_bytes)")
        # Far over: refused from the body's length, before the form is parsed.
        far_over = post(client, padded(image, 2_000_000), "b.png")
        assert_error(far_over, 413, "too_large")
        assert far_over.json()["error"]["message"].endswith("> 97.7 KB (collect.max_bytes)")
        too_many = post(client, encode(image, "PNG"), "c.png")
        assert_error(too_many, 413, "too_many_pixels")
        assert too_many.json()["error"]["message"] == (
            "c.png: image is 40x30, over the 1,000-pixel limit"
        )


def test_an_operator_ceiling_below_the_models_limit_applies_and_is_logged(
    registry_copy: ModelRegistry,
    tmp_path: Path,
    digit: tuple[Image.Image, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ceiling = {"max_upload_bytes": 50_000, "max_image_pixels": 500}
    with (
        caplog.at_level(logging.WARNING, logger="api_service.manager"),
        served_with(registry_copy, tmp_path, ceiling, max_bytes=100_000) as client,
    ):
        response = post(client, padded(digit[0], 60_000))
    assert_error(response, 413, "too_large")
    assert response.json()["error"]["message"].endswith("(MEGA_MAX_UPLOAD_BYTES)")
    warnings = [r.getMessage() for r in caplog.records if r.name == "api_service.manager"]
    assert any("50,000" in w and "100,000" in w for w in warnings), warnings
    assert any("500" in w and "40,000,000" in w for w in warnings), warnings


def test_the_served_limits_are_those_training_applied(
    client: TestClient, tiny_pipeline: TinyPipeline
) -> None:
    """collect.* limits → processor → trainer → registry → API: the whole chain."""
    from common.params import load_params

    collect = load_params(tiny_pipeline.root / "params.yaml").collect
    spec = client.get("/v1/model").json()["input"]
    assert (spec["max_bytes"], spec["max_pixels"]) == (collect.max_bytes, collect.max_pixels)
