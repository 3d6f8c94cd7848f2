"""Synthetic data the benchmark scripts share (no TensorFlow here).

- `photo_like`: a smooth, textured RGB image that compresses like a photo;
- `jpeg_bytes`: one such image as JPEG;
- `write_photo_store`: a raw store in the collector's layout (`images/<label>/<sha256>.jpg`
  and `manifest.jsonl`) of such JPEGs, which the processor reads and whose class
  folders `keras.utils.image_dataset_from_directory` reads.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from common.contracts import ManifestItem, write_manifest
from common.images import sha256_hex

CLASSES = 10
JPEG_QUALITY = 90


def photo_like(rng: np.random.Generator, index: int, size: int) -> np.ndarray:
    """A `size`×`size` uint8 RGB image `[size, size, 3]`: waves plus noise.

    Smooth enough to compress like a photo (unlike pure noise), varied by `index`.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.sin(xx / (5 + index % 17)) * 60 + np.cos(yy / (7 + index % 11)) * 60 + 128
    image = np.stack([base, base[::-1], base[:, ::-1]], axis=-1)
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    """`pixels` (uint8 `[H, W, 3]`) as a JPEG at quality 90."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def write_photo_store(folder: Path, count: int, size: int) -> Path:
    """`count` photo-like `size`² JPEGs under `CLASSES` labels, as the collector stores them.

    Returns the folder of class subfolders (`folder / "images"`). Deterministic: the
    same arguments write the same bytes.
    """
    rng = np.random.default_rng(0)
    items = []
    for index in range(count):
        data = jpeg_bytes(photo_like(rng, index, size))
        sha, label = sha256_hex(data), str(index % CLASSES)
        path = f"images/{label}/{sha}.jpg"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
        items.append(
            ManifestItem(
                path=path, label=label, sha256=sha, source="bench", width=size, height=size
            )
        )
    write_manifest(str(folder / "manifest.jsonl"), items)
    return folder / "images"
