"""The offline default source: the 8x8 handwritten digits shipped in this package.

`data/digits.csv.gz` is the UCI "Optical Recognition of Handwritten Digits" test
set (1797 images, CC BY 4.0; see data/README.md), byte for byte the copy that
scikit-learn bundles, so the PNGs and the raw store's hashes are the ones
scikit-learn's `load_digits` gave, without SciPy and scikit-learn in the image.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from importlib import resources
from typing import TYPE_CHECKING

from collector.sources.pairs import PairsSource
from common.images import encode_png

if TYPE_CHECKING:
    # Imported when the digits are read: every collection imports this module (through
    # `collector.sources`), and only this source needs NumPy.
    import numpy as np

DIGITS_FILE = "data/digits.csv.gz"
DIGITS_COUNT = 1797


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """`(images, labels)`: float64 `[1797, 8, 8]` with values 0..16, and int64 `[1797]` 0..9.

    Each CSV row is 64 pixel values, row by row, then the label.
    """
    import numpy as np

    data = resources.files("collector.sources").joinpath(DIGITS_FILE)
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as text:
        rows = np.loadtxt(text, delimiter=",")
    return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64)


def iter_digits(limit: int | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield `(label, png_bytes)` for each bundled digit, in the data set's order."""
    import numpy as np

    images, labels = load_digits()
    # Values run 0..16; stretch to 0..255 so the PNGs look like ordinary images.
    pixels = np.clip(np.rint(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    count = len(pixels) if limit is None else min(limit, len(pixels))
    for index in range(count):
        yield str(int(labels[index])), encode_png(pixels[index][:, :, np.newaxis])


def digits_source(limit: int | None) -> PairsSource:
    """The digits, the first `limit` of them when given."""
    total = DIGITS_COUNT if limit is None else min(limit, DIGITS_COUNT)
    return PairsSource(name="digits", pairs=iter_digits(limit), total=total)
