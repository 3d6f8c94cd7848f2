"""The offline default source: scikit-learn's bundled 8x8 handwritten digits."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from PIL import Image

from collector.sources.pairs import PairsSource

DIGITS_COUNT = 1797


def iter_digits(limit: int | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield `(label, png_bytes)` for each bundled digit, in the data set's order."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Values run 0..16; stretch to 0..255 so the PNGs look like ordinary images.
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    count = len(images) if limit is None else min(limit, len(images))
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(images[index]).save(buffer, format="PNG")
        yield str(int(bunch.target[index])), buffer.getvalue()


def digits_source(limit: int | None) -> PairsSource:
    """The digits, the first `limit` of them when given."""
    total = DIGITS_COUNT if limit is None else min(limit, DIGITS_COUNT)
    return PairsSource(name="digits", pairs=iter_digits(limit), total=total)
