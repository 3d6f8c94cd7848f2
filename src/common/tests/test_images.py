import io
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from common.contracts import Preprocess
from common.images import (
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
    encode_png,
    load_for_model,
    load_image,
    open_image,
    to_model_pixels,
)

GRAY16 = Preprocess(image_size=16, color_mode="grayscale")
RGB16 = Preprocess(image_size=16, color_mode="rgb")


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, I am text", "not an image"),
        (encoded(Image.new("RGB", (64, 64), "red"), "JPEG")[:200], "not a readable image"),
    ],
)
def test_bad_bytes_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data)


def test_only_the_decoder_of_the_sniffed_format_may_run() -> None:
    png = encoded(Image.new("L", (8, 8)))
    assert decode_image(png).size == (8, 8)
    gif_body = encoded(Image.new("L", (8, 8)), "GIF")
    with pytest.raises(ImageDecodeError, match="not a readable PNG image"):
        decode_image(png[:8] + gif_body)  # a PNG signature: the GIF decoder never runs
    with pytest.raises(UnsupportedImageError, match="PostScript files are not supported"):
        decode_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")


def test_pixel_limit() -> None:
    data = encoded(Image.new("L", (300, 300)))
    with pytest.raises(ImageDecodeError, match="pixel limit"):
        decode_image(data, max_pixels=10_000)


def test_opening_reads_the_header_and_loading_decodes() -> None:
    data = encoded(Image.new("L", (300, 200)))
    image = open_image(data)
    assert (image.size, image.mode) == ((300, 200), "L")
    assert image.tile, "nothing decoded yet"
    assert load_image(image) is image and not image.tile
    with pytest.raises(ImageTooLargeError, match="300x200, over the 10,000-pixel limit"):
        open_image(data, max_pixels=10_000)
    # A cut JPEG has a whole header: it fails when its pixels are decoded.
    noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    jpeg = encoded(Image.fromarray(noise), "JPEG")
    cut = open_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        load_image(cut)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (40, 20), (200, 10, 10)),
        Image.new("RGBA", (20, 20), (255, 255, 255, 128)),
        Image.new("LA", (20, 20), (255, 0)),
        Image.new("P", (20, 20)),
        Image.new("CMYK", (20, 20), (0, 0, 0, 255)),
        Image.new("I;16", (20, 20), 40000),
    ],
    ids=["rgb", "rgba", "la", "palette", "cmyk", "16-bit"],
)
@pytest.mark.parametrize("spec", [GRAY16, RGB16], ids=["gray", "rgb"])
def test_any_mode_becomes_model_pixels(image: Image.Image, spec: Preprocess) -> None:
    pixels = to_model_pixels(
        decode_image(encoded(image, "TIFF" if image.mode == "CMYK" else "PNG")), spec
    )
    assert pixels.dtype == np.uint8
    assert pixels.shape == (16, 16, spec.channels)


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 60000, 16 * 16, dtype=np.uint16).reshape(16, 16)
    pixels = to_model_pixels(Image.fromarray(ramp), GRAY16)
    assert pixels.max() == 255
    assert len(np.unique(pixels)) > 100


def test_transparent_pixels_become_background() -> None:
    image = Image.new("RGBA", (16, 16), (255, 255, 255, 0))
    assert to_model_pixels(image, GRAY16).max() == 0


def test_exif_orientation_is_applied() -> None:
    image = Image.new("L", (16, 8), 0)
    image.paste(255, (0, 0, 8, 8))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    decoded = decode_image(encoded(image, "JPEG", exif=exif.tobytes(), quality=100))
    pixels = to_model_pixels(decoded, Preprocess(image_size=16, color_mode="grayscale"))
    # After rotation the white half is on top.
    assert pixels[:8].mean() > 200 > pixels[8:].mean() + 100


@pytest.mark.parametrize("level", [0, 1, 6, 9])
@pytest.mark.parametrize(
    "shape", [(8, 8, 1), (5, 7, 3), (1, 1, 1), (1, 1, 3), (3, 9, 1), (1, 17, 3), (17, 1, 1)]
)
def test_png_round_trip_is_lossless(level: int, shape: tuple[int, int, int]) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    png = encode_png(pixels, level)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (shape[1], shape[0])
        image.verify()  # every chunk's CRC
    color_mode = "grayscale" if shape[2] == 1 else "rgb"
    if shape[0] == shape[1]:  # to_model_pixels makes squares
        spec = Preprocess(image_size=shape[0], color_mode=color_mode)
        assert np.array_equal(to_model_pixels(decode_image(png), spec), pixels)
    with Image.open(io.BytesIO(png)) as image:
        assert np.array_equal(np.asarray(image).reshape(shape), pixels)
    # The trainer's decoder.
    assert np.array_equal(tf.io.decode_png(png, channels=shape[2]).numpy(), pixels)


@pytest.mark.parametrize("level", [0, 6])
@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((4, 4, 1), np.int64),
        np.zeros((4, 4, 3), np.float64),
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((0, 4, 1), np.uint8),
    ],
    ids=["int64", "float64", "2-D", "4 channels", "no rows"],
)
def test_encode_png_refuses_what_it_cannot_store_losslessly(level: int, pixels: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"takes uint8 \[H, W, 1 or 3\] pixels"):
        encode_png(pixels, level)


def test_stored_png_rows_are_unfiltered() -> None:
    """At level 0 zlib only stores, so a row filter cannot shrink the file; it would
    only cost every decode. Each row's first byte, its filter type, is 0 (None)."""
    height, width = 12, 10
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    png = encode_png(pixels, 0)
    start = png.index(b"IDAT")
    (length,) = struct.unpack(">I", png[start - 4 : start])
    idat = png[start + 4 : start + 4 + length]
    assert idat[:2] == b"\x78\x01"  # zlib's header of a stored stream
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * 3)
    assert rows[:, 0].tolist() == [0] * height
    assert np.array_equal(rows[:, 1:].reshape(pixels.shape), pixels)
    assert len(png) <= len(encoded(Image.fromarray(pixels), compress_level=0))


def test_pad_keeps_the_aspect_ratio() -> None:
    wide = Image.new("L", (64, 32), 255)
    pixels = to_model_pixels(wide, Preprocess(image_size=16, color_mode="grayscale", resize="pad"))
    assert pixels[:3].max() == 0 and pixels[-3:].max() == 0  # black bars top and bottom
    assert pixels[6:10].min() == 255
    stretched = to_model_pixels(wide, Preprocess(image_size=16, color_mode="grayscale"))
    assert stretched.min() == 255


def test_jpeg_draft_decoding_is_close_to_a_full_decode() -> None:
    rng = np.random.default_rng(5)
    smooth = np.kron(rng.integers(0, 256, (16, 16, 3)), np.ones((32, 32, 1))).astype(np.uint8)
    data = encoded(Image.fromarray(smooth), "JPEG", quality=95)
    spec = Preprocess(image_size=32, color_mode="rgb")
    fast = load_for_model(data, spec)
    full = to_model_pixels(decode_image(data), spec)
    assert fast.shape == full.shape == (32, 32, 3)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 4
    assert decode_image(data, draft_size=32).info["source_size"] == (512, 512)
