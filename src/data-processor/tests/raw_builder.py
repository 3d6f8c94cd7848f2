"""Raw stores for the processor's tests, written directly in the collector's format.

The processor's contract is the raw store (`images/<label>/<sha256>.<ext>` plus
`manifest.jsonl`), not the collector: these helpers write that format with
`common.contracts`, so the processor is tested without importing another container.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from common.contracts import ManifestItem, write_manifest
from common.images import encode_png
from common.params import ProcessParams

# The tests' split: with 250 labelled items (or the background below) every class
# reaches every split, which the processor requires.
TEST_SPLIT = {"train": 0.7, "val": 0.1, "test": 0.2}
RAW_ITEMS = 250
BACKGROUND = 60


def process_params(**overrides: object) -> ProcessParams:
    """Processing parameters for tiny test sets: one item per class is enough."""
    return ProcessParams.model_validate({"min_per_class": 1, "split": TEST_SPLIT, **overrides})


def encoded(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    """`image` saved in format `fmt` (PNG, JPEG, ...), as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def noise_png(rng: np.random.Generator) -> bytes:
    """A 16x16 grayscale PNG of noise: distinct for every draw."""
    return encoded(Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)), "PNG")


def labelled_images(count: int) -> dict[str, tuple[str, bytes]]:
    """`count` distinct 8x8 grayscale PNGs labelled "0".."9", as digits-like test data.

    Item `i` depends on `i` alone, so a larger `count` only adds items. Class sizes
    are uneven (with 250 items "2" has 13, "7" has 33), and every class reaches
    every split of TEST_SPLIT.
    """
    files = {}
    for index in range(count):
        rng = np.random.default_rng(index)
        label = str(int(rng.integers(10)))
        pixels = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
        files[f"item-{index}.png"] = (label, encode_png(pixels))
    return files


def with_background(files: dict[str, tuple[str, bytes]]) -> dict[str, tuple[str, bytes]]:
    """`files` plus two classes, bg0 and bg1, of noise images that reach every split."""
    rng = np.random.default_rng(11)
    background = {f"bg{i % 2}-{i}.png": (f"bg{i % 2}", noise_png(rng)) for i in range(BACKGROUND)}
    return {**background, **files}


def write_raw_store(folder: Path, files: dict[str, tuple[str, bytes]]) -> None:
    """Write `{source name: (label, bytes)}` as a raw store, unvalidated: bad files stay.

    Rows name their file by content hash like the collector's; width and height are
    what Pillow reads, or 1 for bytes it cannot read. An existing store is replaced
    row for row (its files stay).
    """
    items = []
    for name, (label, data) in files.items():
        sha = hashlib.sha256(data).hexdigest()
        path = f"images/{label}/{sha}{Path(name).suffix}"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
        width, height = _size(data)
        items.append(
            ManifestItem(
                path=path, label=label, sha256=sha, source=name, width=width, height=height
            )
        )
    write_manifest(str(folder / "manifest.jsonl"), items)


def _size(data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, ValueError):
        return 1, 1  # unreadable on purpose: the processor must reject it


def shas_by_split(folder: Path, compression: str = "") -> dict[str, set[str]]:
    """The `image/sha256` of every example in each split's shards under `folder`."""
    result: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        files = [str(p) for p in sorted(folder.glob(f"{split}-*.tfrecord"))]
        records = tf.data.TFRecordDataset(files, compression_type=compression) if files else []
        result[split] = {
            tf.train.Example.FromString(r.numpy())
            .features.feature["image/sha256"]
            .bytes_list.value[0]
            .decode()
            for r in records
        }
    return result
