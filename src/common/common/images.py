"""The input contract: which image files every stage accepts, and how they become pixels.

The collector (through its two halves, `open_image` then `load_image`), the processor
and the API all decode through `decode_image` and convert through `to_model_pixels`,
so a file that training would accept is served the same way, and a file it refuses is
refused by serving with the same reason.
See docs/data.md ("What images are accepted").
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError

from common.contracts import Preprocess

if TYPE_CHECKING:
    # NumPy is imported where pixels become arrays, not here: checking an 8-bit image
    # (all the collector does) needs none, and importing it costs a short-lived
    # process such as the collector a third of a second.
    import numpy as np

# Pillow's own decompression-bomb guard, made an error instead of a warning. The
# defaults of collect.max_pixels and collect.max_bytes (a test checks); the processor
# records the values training used in preprocess.json, and the API enforces those.
MAX_PIXELS = 40_000_000
MAX_BYTES = 20 * 1024 * 1024


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message says why."""

    code = "invalid_image"


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than allowed (a decompression bomb, or just too big)."""

    code = "too_many_pixels"


class FileTooLargeError(ImageTooLargeError):
    """The file has more bytes than allowed."""

    code = "too_large"


class ImageTooSmallError(ImageDecodeError):
    """The image is smaller on a side than the data's `min_size`."""

    code = "image_too_small"


class UnsupportedImageError(ImageDecodeError):
    """A recognised file or pixel layout that the pipeline does not take."""

    code = "unsupported_media_type"


@dataclass(frozen=True)
class ImageFormat:
    """An accepted file format: Pillow's name for it (its only decoder allowed to run)
    and the extension the raw store gives such files."""

    name: str
    extension: str


_PNG = ImageFormat("PNG", "png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG = ImageFormat("JPEG", "jpg")  # also MPO: a JPEG with an MP index, as phones write
_GIF = ImageFormat("GIF", "gif")
_BMP = ImageFormat("BMP", "bmp")
_TIFF = ImageFormat("TIFF", "tif")
_WEBP = ImageFormat("WEBP", "webp")
ACCEPTED_NAMES = "PNG, JPEG, GIF, BMP, TIFF or WebP"

# Accepted formats by their first bytes. Pillow reads many more (EPS would run
# Ghostscript, for one), so only the decoder of the recognised format may run.
_SIGNATURES: tuple[tuple[bytes, ImageFormat], ...] = (
    (PNG_SIGNATURE, _PNG),
    (b"\xff\xd8\xff", _JPEG),
    (b"GIF87a", _GIF),
    (b"GIF89a", _GIF),
    (b"BM", _BMP),
    (b"II*\x00", _TIFF),
    (b"MM\x00*", _TIFF),
)
# Recognised media that are not images we take: "unsupported" rather than "not an image".
_REFUSED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript"),
    (b"8BPS", "Photoshop"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x1f\x8b", "gzip"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML"),
    (b"\x00\x00\x00\x0cjP", "JPEG 2000"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
)

# Pixel layouts (Pillow modes) a file may decode to. Everything is turned into 8-bit
# L or RGB by `to_model_pixels`; 1-bit, palette, alpha, CMYK, YCbCr, LAB and HSV by
# Pillow's conversions, deeper integer and float images by `_to_8bit`.
ACCEPTED_MODES = frozenset(
    {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
    | {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
)
_VIA_RGB = frozenset({"LAB", "HSV", "YCbCr", "CMYK", "RGBX"})
_DEEP_INTEGER = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def human_bytes(size: int) -> str:
    """`size` bytes as a short text: "512 B", "15.0 MB" (units of 1024)."""
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} GB"


def byte_limit_reason(size: int | str, limit: int, setting: str = "collect.max_bytes") -> str:
    """The one-line refusal of a file of `size` bytes (or a text such as "more than …")
    over `limit` bytes, naming the `setting` that sets the limit. The collector, the
    processor and the API all word it this way."""
    shown = size if isinstance(size, str) else human_bytes(size)
    return f"over the byte limit: {shown} > {human_bytes(limit)} ({setting})"


def check_bytes(size: int, limit: int, setting: str = "collect.max_bytes") -> None:
    """Refuse a file of more than `limit` bytes; raises FileTooLargeError."""
    if size > limit:
        raise FileTooLargeError(byte_limit_reason(size, limit, setting))


def sniff_format(data: bytes) -> ImageFormat:
    """The accepted format the first bytes show.

    Raises ImageDecodeError for empty or unknown bytes, UnsupportedImageError for
    known media the pipeline does not take (PDF, HEIC, SVG, ...).
    """
    if not data:
        raise ImageDecodeError("empty file")
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _WEBP
    for magic, name in _REFUSED_SIGNATURES:
        if data.startswith(magic):
            raise UnsupportedImageError(f"{name} files are not supported; use {ACCEPTED_NAMES}")
    if data[4:8] == b"ftyp":
        raise UnsupportedImageError(
            f"HEIF/AVIF/MP4 files are not supported; convert to JPEG or PNG ({ACCEPTED_NAMES})"
        )
    raise ImageDecodeError(f"not an image ({ACCEPTED_NAMES})")


def decode_image(
    data: bytes,
    max_pixels: int = MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode, fully load and check an image against the input contract.

    Only the decoder of the format `sniff_format` recognises may run; the pixel count
    is checked from the header before decoding. An animated or multi-page file gives
    its first frame (an MPO its primary image). With `draft_size`, a JPEG is decoded
    directly at the smallest DCT scale that is still at least that many pixels on its
    short side: several times faster when the model input is much smaller than the
    photo; `info["source_size"]` keeps the size before that.

    The same as `load_image(open_image(data, max_pixels), draft_size)`.
    Raises ImageDecodeError (or its subclasses ImageTooLargeError,
    UnsupportedImageError) with a one-line reason.
    """
    return load_image(open_image(data, max_pixels), draft_size)


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image with only its header read: format, size and mode known, nothing decoded.

    The first half of `decode_image`, for a caller that chooses where to decode by the
    declared size (the collector decodes small images on its event loop). Raises
    ImageDecodeError, or ImageTooLargeError when the header declares more than
    `max_pixels` pixels.
    """
    fmt = sniff_format(data)
    with _pillow_errors(fmt.name):
        image = Image.open(io.BytesIO(data), formats=(fmt.name,))
    if image.width * image.height > max_pixels:
        raise ImageTooLargeError(
            f"image is {image.width}x{image.height}, over the {max_pixels:,}-pixel limit"
        )
    # Kept for size checks: a JPEG draft shrinks `image.size`.
    image.info["source_size"] = image.size
    return image


def load_image(image: Image.Image, draft_size: int | None = None) -> Image.Image:
    """Decode an image from `open_image` and check its pixels (the second half of
    `decode_image`, which says what `draft_size` does); returns the same image, loaded.

    Raises ImageDecodeError (UnsupportedImageError for a pixel mode the pipeline does
    not take).
    """
    with _pillow_errors(image.format or "image"):
        # Pillow names a JPEG with an MP index (as phones write) MPO.
        if draft_size is not None and image.format in ("JPEG", "MPO"):
            short = min(image.size)
            scale = max(1, short // draft_size)
            image.draft(image.mode, (image.width // scale, image.height // scale))
        image.load()
    if image.mode not in ACCEPTED_MODES:
        raise UnsupportedImageError(
            f"pixel mode {image.mode} is not supported; save the image as 8-bit RGB or grayscale"
        )
    _value_scale(image)  # refuses value ranges that cannot be converted
    return image


@contextlib.contextmanager
def _pillow_errors(format_name: str) -> Iterator[None]:
    """Pillow's failures to read an image as ImageDecodeError with a one-line reason.

    Pillow's decompression-bomb warning is an error here, on opening and on loading
    alike (a TIFF's tiles are checked only when it loads).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image over the pixel limit: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"not a readable {format_name} image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"not a readable image: {exc}") from exc


def check_min_size(image: Image.Image, min_size: int) -> None:
    """Refuse an image smaller than `min_size` on either side (before any JPEG draft)."""
    width, height = image.info.get("source_size", image.size)
    if min(width, height) < min_size:
        raise ImageTooSmallError(
            f"image is {width}x{height}, smaller than min_size {min_size} on a side"
        )


def is_deep(image: Image.Image) -> bool:
    """Whether `image` (opened; its header read) holds deeper than 8-bit values.

    Checking one takes NumPy (`_value_scale`), which is imported on first use.
    """
    return image.mode in _DEEP_INTEGER or image.mode == "F"


def _value_scale(image: Image.Image) -> float | None:
    """The factor that brings a deeper-than-8-bit image to 0–255; None for 8-bit modes.

    16- and 32-bit integer images are scaled by 255/max (a 12-bit scan in 16 bits
    still fills the range); negative values are refused. Float images must hold
    finite values in 0–1 (scaled by 255) or 0–255 (taken as they are); others are
    refused with the range found. Raises ImageDecodeError.
    """
    if not is_deep(image):
        return None
    import numpy as np  # only for deep images (see the TYPE_CHECKING import)

    array = np.asarray(image)  # native dtype: no float64 copy of a large image
    if array.size == 0:
        return 1.0
    if image.mode == "F" and not np.isfinite(array).all():
        raise ImageDecodeError("float image holds NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if image.mode == "F":
        if low < 0 or high > 255:
            raise ImageDecodeError(
                f"float image values run {low:g} to {high:g}; expected 0 to 1 or 0 to 255"
            )
        return 255.0 if high <= 1.0 else 1.0
    if low < 0:
        raise ImageDecodeError(
            f"integer image holds negative values (down to {low:g}); "
            "save it as unsigned 8- or 16-bit"
        )
    return 255.0 / (high or 1.0)


def _to_8bit(image: Image.Image) -> Image.Image:
    """A deeper-than-8-bit image as 8-bit grayscale (see `_value_scale`); others unchanged."""
    scale = _value_scale(image)
    if scale is None:
        return image
    import numpy as np

    array = np.asarray(image, dtype=np.float32) * np.float32(scale)
    return Image.fromarray(np.rint(array).clip(0, 255).astype(np.uint8))


def as_gray(image: Image.Image) -> Image.Image:
    """Any accepted image as 8-bit L, by the conversions `to_model_pixels` uses
    (deep images scaled, not clipped; LAB, HSV, YCbCr and CMYK through RGB)."""
    image = _to_8bit(image)
    if image.mode in _VIA_RGB:
        image = image.convert("RGB")
    return image.convert("L")


def to_model_pixels(image: Image.Image, spec: Preprocess) -> np.ndarray:
    """Orient, convert and resize an image to the model's uint8 `[H, W, C]` input.

    EXIF orientation is applied; deep images are scaled to 8 bits (see `_to_8bit`);
    transparency is composited on black. Raises ImageDecodeError for a float or
    integer image whose values cannot be converted.
    """
    import numpy as np

    image = _to_8bit(ImageOps.exif_transpose(image))
    if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
        # Composite transparency on black, the digits' background.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode in _VIA_RGB:
        image = image.convert("RGB")  # Pillow has no direct conversion from these to L
    image = image.convert("L" if spec.color_mode == "grayscale" else "RGB")
    size = (spec.image_size, spec.image_size)
    if spec.resize == "pad":
        # Keep the aspect ratio; pad with black, the digits' background.
        image = ImageOps.pad(image, size, method=Image.Resampling.BILINEAR, color=0)
    elif image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    return pixels


def encode_png(pixels: np.ndarray, compress_level: int = 6) -> bytes:
    """Lossless PNG bytes of a uint8 `[H, W, C]` array (C = 1 or 3).

    `compress_level` is zlib's, 0 (stored: larger, several times faster to decode) to
    9; 6 is Pillow's default. Level 0 is written by `_stored_png`, the others by Pillow.

    Raises:
        ValueError: `pixels` is not uint8 `[H, W, 1 or 3]` with H and W at least 1.
    """
    shape = pixels.shape
    if pixels.dtype.name != "uint8" or len(shape) != 3 or shape[2] not in (1, 3) or 0 in shape:
        raise ValueError(f"encode_png takes uint8 [H, W, 1 or 3] pixels, not {pixels.dtype}{shape}")
    if compress_level == 0:
        return _stored_png(pixels)
    array = pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def _stored_png(pixels: np.ndarray) -> bytes:
    """PNG of uint8 `[H, W, C]` pixels (C = 1 or 3), zlib level 0, rows unfiltered.

    Pillow chooses a filter for each row (Sub, Up or Paeth wherever one looks smaller)
    whatever the level. When zlib only stores, filtering cannot make the file smaller,
    and every decoder has to undo it: unfiltered, TensorFlow's `decode_png` took
    0.25–0.32 s for 4,020 RGB images of 128×128 against 0.34–0.64 s on 2 cores.
    """
    import numpy as np  # loaded already: `pixels` is an array

    height, width, channels = pixels.shape
    color_type = {1: 0, 3: 2}[channels]  # PNG's greyscale and truecolour
    rows = np.zeros((height, 1 + width * channels), np.uint8)  # byte 0: filter type None
    rows[:, 1:] = pixels.reshape(height, width * channels)
    if rows.nbytes >= 2**31:  # one IDAT chunk's length must fit PNG's 31 bits
        raise ValueError(f"a {width}×{height} image is too large for one stored PNG chunk")
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 0))
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, and the CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def prepare_image(
    data: bytes, spec: Preprocess, max_pixels: int | None = None
) -> tuple[Image.Image, np.ndarray]:
    """Bytes → (decoded image, model pixels): the one path training and serving share.

    The limits are the spec's (`max_bytes`, `max_pixels`: what training applied; the
    contract's defaults for a spec that predates them); `max_pixels` overrides the
    pixel limit (the API passes its effective one). Raises ImageDecodeError or a
    subclass (too many bytes or pixels, too small for `spec.min_size`, unsupported
    format or pixel mode, unconvertible values).
    """
    check_bytes(len(data), spec.max_bytes or MAX_BYTES)
    pixel_limit = max_pixels if max_pixels is not None else spec.max_pixels or MAX_PIXELS
    image = decode_image(data, pixel_limit, draft_size=spec.image_size)
    check_min_size(image, spec.min_size)
    return image, to_model_pixels(image, spec)


def load_for_model(data: bytes, spec: Preprocess, max_pixels: int | None = None) -> np.ndarray:
    """Bytes → model pixels `[H, W, C]` uint8, as the processor makes them."""
    return prepare_image(data, spec, max_pixels)[1]


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """`round(values / scale) + zero_point`, clipped to `dtype`'s range (uint8 or int8):
    float pixels as a full-integer LiteRT model's input tensor takes them, with the
    tensor's (scale, zero point). Serving and the optimize stage's measurements both
    quantize here, so a variant is measured on exactly the inputs it is served.

    For this project's models (0–255 pixels in, rescaled inside the network) a uint8
    input usually has scale 1 and zero point 0: the raw pixels pass unchanged.
    """
    import numpy as np

    info = np.iinfo(dtype)
    # A scale of 0 means the converter recorded none: the values pass as they are.
    quantized = np.round(values / (scale or 1.0)) + zero_point
    return np.clip(quantized, info.min, info.max).astype(dtype)
