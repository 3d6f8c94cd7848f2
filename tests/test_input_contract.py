"""One input contract: collector, processor and API accept, refuse and convert alike.

Every kind of image file below is generated here, then (1) collected into a raw
store, (2) processed from the stored file exactly as the processor's workers do,
and (3) prepared as the API's worker does. Training accepts a file when the
collector and the processor both do; serving must accept the same files, refuse
the rest with the same reason and a 4xx, and feed the model the same pixels the
processor stores.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api_service.inputs import InputError, prepare, sniff
from api_service.settings import ServingSettings as Settings
from collector.collect import CollectOptions, collect_source
from collector.sources import PairsSource
from common import storage
from common.contracts import Preprocess, read_manifest
from common.images import sha256_hex
from processor.transform import Job, transform

MAX_PIXELS = 1_000_000  # small, so the over-the-limit case stays a small file
SPECS = {
    "gray": Preprocess(image_size=16, color_mode="grayscale", min_size=8),
    "rgb": Preprocess(image_size=16, color_mode="rgb", min_size=8),
    "rgb-pad": Preprocess(image_size=16, color_mode="rgb", resize="pad", min_size=8),
}
RNG = np.random.default_rng(7)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rgb(width: int = 40, height: int = 30) -> Image.Image:
    """Smooth random colour blocks: survive JPEG and resizing recognisably."""
    blocks = RNG.integers(0, 256, (height // 10 + 1, width // 10 + 1, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(blocks, np.ones((10, 10, 1), np.uint8))[:height, :width])


def gray() -> Image.Image:
    return rgb().convert("L")


def with_alpha(mode: str) -> Image.Image:
    image = rgb().convert(mode)
    alpha = Image.fromarray(RNG.integers(0, 256, (30, 40), dtype=np.uint8))
    image.putalpha(alpha)
    return image


def palette_with_transparency() -> bytes:
    image = rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(image, "PNG", transparency=0)


def float_tiff(low: float, high: float) -> bytes:
    values = RNG.uniform(low, high, (30, 40)).astype(np.float32)
    return encode(Image.fromarray(values, mode="F"), "TIFF")


def int32_tiff(low: int, high: int) -> bytes:
    return encode(Image.fromarray(RNG.integers(low, high, (30, 40), dtype=np.int32)), "TIFF")


def png16(color: bool) -> bytes:
    """A 16-bit grayscale or RGB PNG, written by hand (Pillow writes only the former)."""
    channels, color_type = (3, 2) if color else (1, 0)
    values = RNG.integers(0, 65536, (30, 40, channels), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in values)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 40, 30, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise, as cameras write it
    return encode(rgb(), "JPEG", exif=exif.tobytes(), quality=95)


def mpo() -> bytes:
    """A phone-camera JPEG: primary image plus a preview, with an APP2 MP index."""
    data = encode(rgb(), "MPO", save_all=True, append_images=[rgb(20, 15)], quality=95)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    return data


def animated(fmt: str) -> bytes:
    frames = [rgb(), rgb()]
    if fmt == "GIF":
        frames = [frame.convert("P") for frame in frames]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)


ACCEPTED: dict[str, Callable[[], bytes]] = {
    "png-1bit": lambda: encode(gray().convert("1"), "PNG"),
    "png-L": lambda: encode(gray(), "PNG"),
    "png-LA": lambda: encode(with_alpha("L"), "PNG"),
    "png-P": lambda: encode(rgb().convert("P"), "PNG"),
    "png-P-transparency": palette_with_transparency,
    "png-RGB": lambda: encode(rgb(), "PNG"),
    "png-RGBA": lambda: encode(with_alpha("RGB"), "PNG"),
    "png-16bit-gray": lambda: png16(color=False),
    "png-16bit-rgb": lambda: png16(color=True),
    "png-animated": lambda: animated("PNG"),
    "jpeg-RGB": lambda: encode(rgb(), "JPEG", quality=95),
    "jpeg-L": lambda: encode(gray(), "JPEG", quality=95),
    "jpeg-CMYK": lambda: encode(rgb().convert("CMYK"), "JPEG", quality=95),
    "jpeg-exif-rotated": rotated_jpeg,
    "jpeg-large-draft": lambda: encode(rgb(800, 600), "JPEG", quality=90),
    "mpo-phone-camera": mpo,
    "gif": lambda: encode(rgb().convert("P"), "GIF"),
    "gif-transparency": lambda: encode(rgb().convert("P"), "GIF", transparency=3),
    "gif-animated": lambda: animated("GIF"),
    "bmp-RGB": lambda: encode(rgb(), "BMP"),
    "bmp-1bit": lambda: encode(gray().convert("1"), "BMP"),
    "bmp-P": lambda: encode(rgb().convert("P"), "BMP"),
    "tiff-RGB": lambda: encode(rgb(), "TIFF"),
    "tiff-RGBA": lambda: encode(with_alpha("RGB"), "TIFF"),
    "tiff-CMYK": lambda: encode(rgb().convert("CMYK"), "TIFF"),
    "tiff-YCbCr": lambda: encode(rgb().convert("YCbCr"), "TIFF"),
    "tiff-LAB": lambda: encode(rgb().convert("LAB"), "TIFF"),
    "tiff-16bit": lambda: encode(
        Image.fromarray(RNG.integers(0, 4096, (30, 40), np.uint16)), "TIFF"
    ),
    "tiff-32bit-int": lambda: int32_tiff(0, 100_000),
    "tiff-float-0-1": lambda: float_tiff(0.0, 1.0),
    "tiff-float-0-255": lambda: float_tiff(0.0, 255.0),
    "tiff-compressed": lambda: encode(rgb(), "TIFF", compression="tiff_lzw"),
    "tiff-orientation-tag": lambda: encode(rgb(), "TIFF", tiffinfo={274: 6}),
    "tiff-multipage": lambda: encode(rgb(), "TIFF", save_all=True, append_images=[rgb()]),
    "webp-RGB": lambda: encode(rgb(), "WEBP", quality=95),
    "webp-RGBA-lossless": lambda: encode(with_alpha("RGB"), "WEBP", lossless=True),
    "webp-animated": lambda: animated("WEBP"),
}

# Refused kinds: (bytes, the API status, words the one shared reason contains).
REFUSED: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "empty": (lambda: b"", 422, "empty file"),
    "text": (lambda: b"label,url\n", 422, "not an image"),
    "truncated-jpeg": (lambda: encode(rgb(), "JPEG")[:300], 422, "not a readable image"),
    "png-signature-gif-body": (
        lambda: b"\x89PNG\r\n\x1a\n" + encode(rgb(), "GIF"),
        422,
        "not a readable PNG image",
    ),
    "tiff-float-negative": (lambda: float_tiff(-1.0, 1.0), 422, "float image values run"),
    "tiff-float-over-255": (lambda: float_tiff(0.0, 1000.0), 422, "float image values run"),
    "tiff-float-nan": (
        lambda: encode(Image.fromarray(np.full((30, 40), np.nan, np.float32)), "TIFF"),
        422,
        "NaN or infinite",
    ),
    "tiff-32bit-negative": (lambda: int32_tiff(-50, 50), 422, "negative values"),
    "too-small": (lambda: encode(rgb(6, 30), "PNG"), 422, "smaller than min_size 8"),
    "too-many-pixels": (lambda: encode(Image.new("L", (1001, 1000)), "PNG"), 413, "pixel limit"),
    "pdf": (lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", 415, "PDF files are not supported"),
    "eps": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n", 415, "PostScript files are not supported"),
    "ico": (lambda: encode(rgb(32, 32), "ICO"), 415, "ICO files are not supported"),
    "heic": (lambda: b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", 415, "HEIF/AVIF"),
    "bigtiff": (lambda: b"II+\x00\x08\x00\x00\x00" + bytes(16), 415, "BigTIFF"),
}


def training_outcome(data: bytes, spec: Preprocess, tmp_path: Path) -> np.ndarray | str:
    """Collect the bytes, then process the stored file: its pixels, or the refusal reason."""
    out = str(tmp_path / "raw")
    result = collect_source(
        PairsSource(name="t", pairs=[("k", data)]), out, CollectOptions(max_pixels=MAX_PIXELS)
    )
    if result.failed:
        return result.failed[0].reason
    [item] = read_manifest(storage.join(out, "manifest.jsonl"))
    uri = storage.join(out, item.path)
    assert storage.read_bytes(uri) == data  # the raw store keeps the file as it came
    job = Job(uri, item.path, item.label, sha256_hex(data))
    outcome = transform(job, spec, with_phash=True, max_pixels=MAX_PIXELS, png_compress_level=0)
    if outcome.reason is not None:
        return outcome.reason
    assert outcome.png is not None
    stored = np.asarray(Image.open(io.BytesIO(outcome.png)))  # what the TFRecord holds
    return stored[:, :, np.newaxis] if stored.ndim == 2 else stored


def serving_outcome(data: bytes, spec: Preprocess) -> np.ndarray | InputError:
    """What the API does with an upload: the route's sniff, then the worker's prepare."""
    try:
        sniff(data)
        return prepare(data, spec, MAX_PIXELS)
    except InputError as exc:
        return exc


@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("kind", list(ACCEPTED))
def test_what_training_accepts_is_served_as_the_same_pixels(
    kind: str, spec: str, tmp_path: Path
) -> None:
    data = ACCEPTED[kind]()
    trained = training_outcome(data, SPECS[spec], tmp_path)
    served = serving_outcome(data, SPECS[spec])
    assert isinstance(trained, np.ndarray), f"training refused {kind}: {trained}"
    assert isinstance(served, np.ndarray), f"serving refused {kind}: {served}"
    assert served.shape == SPECS[spec].shape and served.dtype == np.uint8
    assert np.array_equal(trained, served)
    assert served.std() > 5, "the image became one flat colour"


@pytest.mark.parametrize("kind", list(REFUSED))
def test_what_training_refuses_is_refused_by_serving_with_the_same_reason(
    kind: str, tmp_path: Path
) -> None:
    make, status, words = REFUSED[kind]
    data = make()
    trained = training_outcome(data, SPECS["rgb"], tmp_path)
    served = serving_outcome(data, SPECS["rgb"])
    assert isinstance(trained, str), f"training accepted {kind}"
    assert isinstance(served, InputError), f"serving accepted {kind}"
    assert words in trained
    assert served.message == trained
    assert served.status == status


def test_float_images_keep_their_brightness() -> None:
    # Regression: a 0–1 float TIFF was served as an all-black image.
    values = np.linspace(0.0, 1.0, 16 * 16, dtype=np.float32).reshape(16, 16)
    data = encode(Image.fromarray(values, mode="F"), "TIFF")
    pixels = prepare(data, Preprocess(image_size=16, color_mode="grayscale"), MAX_PIXELS)
    assert pixels.min() == 0 and pixels.max() == 255
    assert abs(float(pixels.mean()) - 127.5) < 2


def test_exif_rotation_is_applied_the_same_way_everywhere(tmp_path: Path) -> None:
    pixels = serving_outcome(rotated_jpeg(), SPECS["rgb-pad"])
    assert isinstance(pixels, np.ndarray)
    # 40x30 rotated to 30x40 and padded: black bars left and right, not top and bottom.
    assert pixels[:, :1].max() < 10 and pixels[:1, 4:12].max() > 10


def test_size_limits_have_one_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from api_service.limits import serving_limits
    from collector.fetch import FetchOptions
    from common.images import MAX_BYTES, MAX_PIXELS
    from common.params import CollectParams

    assert (CollectParams().max_bytes, CollectParams().max_pixels) == (MAX_BYTES, MAX_PIXELS)
    assert FetchOptions().max_bytes == MAX_BYTES
    # Unset, the API's settings follow the model; a model that predates the recorded
    # limits (an old preprocess.json still loads) gets the defaults training had.
    assert Settings().max_upload_bytes is None and Settings().max_image_pixels is None
    monkeypatch.setenv("MEGA_MAX_UPLOAD_BYTES", "")  # as compose passes an unset variable
    assert Settings().max_upload_bytes is None
    old = Preprocess.model_validate({"image_size": 16, "color_mode": "grayscale"})
    assert old.max_bytes is None and old.max_pixels is None
    limits, warnings = serving_limits(old, Settings())
    assert (limits.max_bytes, limits.max_pixels, warnings) == (MAX_BYTES, MAX_PIXELS, [])


def _collector_reason(data: bytes, max_bytes: int, max_pixels: int) -> str | None:
    from collector.base import ItemRejectedError
    from collector.collect import _inspect

    try:
        _inspect(data, max_bytes, max_pixels)
    except ItemRejectedError as exc:
        return exc.reason
    return None


def _served(data: bytes, spec: Preprocess) -> np.ndarray | InputError:
    """The API's whole path with the limits it derives from the model's spec."""
    from api_service.inputs import check_size
    from api_service.limits import serving_limits

    limits, _ = serving_limits(spec, Settings())
    try:
        check_size(data, limits)
        sniff(data)
        return prepare(data, spec, limits.max_pixels)
    except InputError as exc:
        return exc


@pytest.mark.parametrize(
    ("limit", "make"),
    [
        ("max_bytes", lambda: encode(rgb(), "PNG") + bytes(5000)),
        ("max_pixels", lambda: encode(rgb(), "PNG")),  # 40x30 = 1200 pixels
    ],
)
def test_a_file_over_the_recorded_limits_is_refused_alike(
    limit: str, make: Callable[[], bytes], tmp_path: Path
) -> None:
    """The limits training applied travel in the spec; serving refuses past them
    with the collector's reason and 413, and accepts the same file under a higher one."""
    data = make()
    low = {"max_bytes": 4000, "max_pixels": 1000}
    tight = SPECS["rgb"].model_copy(update={limit: low[limit]})
    roomy = SPECS["rgb"].model_copy(update={limit: low[limit] * 10})
    reason = _collector_reason(data, tight.max_bytes or 10**9, tight.max_pixels or 10**9)
    assert reason is not None
    served = _served(data, tight)
    assert isinstance(served, InputError)
    assert (served.status, served.message) == (413, reason)
    stored = tmp_path / "k.png"
    stored.write_bytes(data)
    job = Job(str(stored), "k.png", "k", sha256_hex(data))
    assert transform(job, tight, with_phash=False, png_compress_level=0).reason == reason
    assert transform(job, roomy, with_phash=False, png_compress_level=0).reason is None
    assert isinstance(_served(data, roomy), np.ndarray)
