"""Checks on uploaded bytes before they reach the decoder, and the decode itself.

Nothing here trusts the client's file name or declared type: the format comes from
the file's first bytes, the size from the image header (read without decoding).
"""

from __future__ import annotations

import numpy as np

from common.contracts import Preprocess
from common.images import ImageDecodeError, ImageTooLargeError, load_for_model

# Formats the service decodes, by signature. Pillow reads many more (EPS would run
# Ghostscript, for one), so only these are handed to it.
SUPPORTED = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
# Recognised media that are not images we serve: 415 rather than "not an image".
UNSUPPORTED = {
    b"%PDF": "PDF",
    b"%!PS": "PostScript",
    b"8BPS": "Photoshop",
    b"\x00\x00\x01\x00": "ICO",
    b"PK\x03\x04": "ZIP",
    b"\x1f\x8b": "gzip",
    b"<svg": "SVG",
    b"<?xml": "XML",
    b"\x00\x00\x00\x0cjP": "JPEG 2000",
}
# Part types a browser or curl may declare for an image; anything else is refused.
ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")


class InputError(Exception):
    """An upload the service refuses, with the HTTP status and a stable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def check_part_type(content_type: str | None) -> None:
    """Refuse a file part whose declared type cannot be an image (415)."""
    if not content_type:
        return
    kind = content_type.split(";", 1)[0].strip().lower()
    if not kind.startswith(ACCEPTED_PART_TYPES):
        raise InputError(415, "unsupported_media_type", f"{kind} is not an image type")


def sniff(data: bytes) -> str:
    """The image format from the signature; 422 for unknown bytes, 415 for other media."""
    if not data:
        raise InputError(422, "invalid_image", "empty file")
    for magic, name in SUPPORTED.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in UNSUPPORTED.items():
        if data.startswith(magic):
            raise InputError(415, "unsupported_media_type", f"{name} files are not supported")
    if data[4:8] == b"ftyp":
        raise InputError(415, "unsupported_media_type", "HEIF/AVIF/MP4 files are not supported")
    raise InputError(422, "invalid_image", "not an image (PNG, JPEG, GIF, BMP, TIFF or WEBP)")


def prepare(data: bytes, spec: Preprocess, max_pixels: int) -> np.ndarray:
    """Decode bytes into the model's uint8 `[H, W, C]` pixels (shared preprocessing).

    Only the decoder of the format the signature shows may run. It checks the pixel
    count from the header before decoding anything, and says which refusal it was:
    too many pixels (413) or unreadable (422).
    """
    fmt = sniff(data)
    try:
        return load_for_model(data, spec, max_pixels, formats=(fmt,))
    except ImageTooLargeError as exc:
        raise InputError(413, "too_many_pixels", str(exc)) from exc
    except ImageDecodeError as exc:
        raise InputError(422, "invalid_image", str(exc)) from exc
    except Exception as exc:  # a decoder crash on crafted input must not become a 500
        raise InputError(422, "invalid_image", f"cannot decode the image: {exc}") from exc
