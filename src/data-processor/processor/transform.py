"""Per-item work done in the worker processes: read, validate, hash, preprocess, encode.

Workers are forked (or spawned from a process that has TensorFlow loaded);
nothing here needs TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from common import storage
from common.contracts import Preprocess
from common.images import (
    ImageDecodeError,
    as_gray,
    encode_png,
    prepare_image,
    sha256_hex,
)


@dataclass(frozen=True)
class Job:
    """One manifest item to process."""

    uri: str
    path: str
    label: str
    sha256: str


@dataclass(frozen=True)
class Outcome:
    """A processed item (`png` set) or a rejected one (`reason` set)."""

    job: Job
    png: bytes | None = None
    phash: int | None = None
    reason: str | None = None


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: robust to resizing and small edits, cheap to compare."""
    small = np.asarray(as_gray(image).resize((9, 8), Image.Resampling.BILINEAR), np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def transform(
    job: Job,
    spec: Preprocess,
    with_phash: bool,
    max_pixels: int | None = None,
    *,
    png_compress_level: int,
) -> Outcome:
    """Process one item; every failure becomes a reason, never an exception.

    The size limits are the spec's unless `max_pixels` overrides. Decoding, the size
    checks and the conversion are `common.images.prepare_image`,
    the very path the API serves through. The result is a PNG of zlib level
    `png_compress_level` (0–9).
    """
    try:
        data = storage.read_bytes(job.uri)
    except (FileNotFoundError, OSError) as exc:
        return Outcome(job, reason=f"cannot read the raw file: {exc}")
    if sha256_hex(data) != job.sha256:
        return Outcome(job, reason="content does not match the manifest's sha256")
    try:
        image, pixels = prepare_image(data, spec, max_pixels)
    except ImageDecodeError as exc:
        return Outcome(job, reason=str(exc))
    except (OSError, ValueError) as exc:  # a conversion Pillow could not do
        return Outcome(job, reason=f"cannot convert the image: {exc}")
    png = encode_png(pixels, png_compress_level)
    return Outcome(job, png=png, phash=dhash(image) if with_phash else None)
