"""Image decoding and the one preprocessing function training and serving share."""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.contracts import Preprocess

# Pillow's own decompression-bomb guard, made an error instead of a warning.
MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message says why."""


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than allowed (a decompression bomb, or just too big)."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(
    data: bytes,
    max_pixels: int = MAX_PIXELS,
    draft_size: int | None = None,
    formats: tuple[str, ...] | None = None,
) -> Image.Image:
    """Decode and fully load an image, rejecting empty, truncated and oversized input.

    With `draft_size`, a JPEG is decoded directly at the smallest DCT scale that
    is still at least that many pixels on its short side: several times faster
    when the model input is much smaller than the photo. `formats` limits the
    decoders Pillow may try (e.g. to the format the caller already recognised).
    """
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
            if image.width * image.height > max_pixels:
                raise ImageTooLargeError(
                    f"image is {image.width}x{image.height}, over the {max_pixels:,}-pixel limit"
                )
            # Kept for size checks: a JPEG draft below shrinks `image.size`.
            image.info["source_size"] = image.size
            if draft_size is not None and image.format == "JPEG":
                short = min(image.size)
                scale = max(1, short // draft_size)
                image.draft(image.mode, (image.width // scale, image.height // scale))
            image.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image over the pixel limit: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not an image, or a format Pillow cannot read") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"not a readable image: {exc}") from exc
    return image


def to_model_pixels(image: Image.Image, spec: Preprocess) -> np.ndarray:
    """Orient, convert and resize an image to the model's uint8 `[H, W, C]` input."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits rather than clip.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        image = Image.fromarray((array * (255.0 / peak)).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
        # Composite transparency on black, the digits' background.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
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


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 `[H, W, C]` array (C = 1 or 3)."""
    array = pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def load_for_model(
    data: bytes,
    spec: Preprocess,
    max_pixels: int = MAX_PIXELS,
    formats: tuple[str, ...] | None = None,
) -> np.ndarray:
    """Bytes → model pixels, as the processor makes them: what serving must use too."""
    image = decode_image(data, max_pixels, draft_size=spec.image_size, formats=formats)
    return to_model_pixels(image, spec)
