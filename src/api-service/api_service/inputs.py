"""Checks on uploaded bytes before they reach the decoder, and the decode itself.

Nothing here trusts the client's file name or declared type: the format comes from
the file's first bytes, the size from the image header (read without decoding).
What is accepted, and how it becomes pixels, is the input contract in
`common.images`, the one the collector and the processor apply: a file training
would refuse is refused here with the same reason.
"""

from __future__ import annotations

import numpy as np

from api_service.limits import Limits
from common.contracts import Preprocess
from common.images import ImageDecodeError, check_bytes, load_for_model, sniff_format

# HTTP status of each refusal code of the input contract.
STATUS = {
    "invalid_image": 422,
    "image_too_small": 422,
    "too_many_pixels": 413,
    "too_large": 413,
    "unsupported_media_type": 415,
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


def _refusal(exc: ImageDecodeError) -> InputError:
    return InputError(STATUS.get(exc.code, 422), exc.code, str(exc))


def check_size(data: bytes, limits: Limits) -> None:
    """Refuse a file over the served model's byte limit (413), worded as the collector
    refuses it (the limits and their rule: `api_service.limits`)."""
    try:
        check_bytes(len(data), limits.max_bytes, limits.bytes_setting)
    except ImageDecodeError as exc:
        raise _refusal(exc) from exc


def sniff(data: bytes) -> str:
    """The image format from the signature; 422 for unknown bytes, 415 for other media."""
    try:
        return sniff_format(data).name
    except ImageDecodeError as exc:
        raise _refusal(exc) from exc


def prepare(data: bytes, spec: Preprocess, max_pixels: int) -> np.ndarray:
    """Decode bytes into the model's uint8 `[H, W, C]` pixels (shared preprocessing).

    Only the decoder of the format the signature shows may run. It checks the pixel
    count from the header before decoding anything, and says which refusal it was:
    too many pixels (413), a format or pixel mode not taken (415), or unreadable,
    unconvertible or smaller than the model's min_size (422).
    """
    try:
        return load_for_model(data, spec, max_pixels)
    except ImageDecodeError as exc:
        raise _refusal(exc) from exc
    except Exception as exc:  # a decoder crash on crafted input must not become a 500
        raise InputError(422, "invalid_image", f"cannot decode the image: {exc}") from exc
