"""Raw store → split, sharded TFRecords with labels, stats and the preprocessing spec."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import tensorflow as tf

from common import storage
from common.contracts import (
    LABELS,
    MANIFEST,
    PREPROCESS,
    SPLITS,
    STATS,
    Preprocess,
    Rejected,
    Split,
    read_manifest,
)
from common.images import ImageDecodeError, decode_image, encode_png, to_model_pixels
from common.params import ProcessParams
from common.tfrecord import make_example


def assign_split(sha256: str, ratios: dict[str, float]) -> Split:
    """Deterministic split from the content hash: adding items never moves old ones."""
    position = int(sha256[:16], 16) / float(1 << 64)
    if position < ratios["train"]:
        return "train"
    if position < ratios["train"] + ratios["val"]:
        return "val"
    return "test"


@dataclass
class _ShardWriter:
    """Writes one split's examples into shards of `shard_size` under temporary names."""

    folder: Path
    split: str
    shard_size: int
    parts: list[Path] = field(default_factory=list)
    _writer: tf.io.TFRecordWriter | None = None
    _in_current: int = 0

    def write(self, record: bytes) -> None:
        if self._writer is None or self._in_current >= self.shard_size:
            self._close_current()
            part = self.folder / f".{self.split}-{len(self.parts):05d}.partial"
            self.parts.append(part)
            self._writer = tf.io.TFRecordWriter(str(part))
            self._in_current = 0
        self._writer.write(record)
        self._in_current += 1

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self) -> list[Path]:
        """Rename the parts to `<split>-NNNNN-of-MMMMM.tfrecord` once the count is known."""
        self._close_current()
        final = []
        for index, part in enumerate(self.parts):
            target = self.folder / f"{self.split}-{index:05d}-of-{len(self.parts):05d}.tfrecord"
            os.replace(part, target)
            final.append(target)
        return final


def process(raw: str, out: str, params: ProcessParams, dataset: str) -> dict:
    """Process the raw store at `raw` into `out`; returns the stats written to stats.json."""
    try:
        items = read_manifest(storage.join(raw, MANIFEST))
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"no {MANIFEST} in {raw}; run the collect stage first (mega collect)"
        ) from exc
    if not items:
        raise ValueError(f"{raw}: the manifest lists no items; run the collect stage first")
    labels = sorted({item.label for item in items})
    label_index = {label: i for i, label in enumerate(labels)}
    spec = Preprocess(image_size=params.image_size, color_mode=params.color_mode)
    ratios = params.split.model_dump()

    # Shards are built in a local staging folder and copied out, so a gs:// output
    # never holds a partial shard.
    staging = Path(tempfile.mkdtemp(prefix="processor-"))
    writers = {split: _ShardWriter(staging, split, params.shard_size) for split in SPLITS}
    counts: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
    rejected: list[Rejected] = []
    seen: set[str] = set()
    for item in items:
        if item.sha256 in seen:
            rejected.append(Rejected(item=item.path, reason="exact duplicate of an earlier item"))
            continue
        seen.add(item.sha256)
        try:
            image = decode_image(storage.read_bytes(storage.join(raw, item.path)))
            pixels = to_model_pixels(image, spec)
        except (ImageDecodeError, FileNotFoundError) as exc:
            rejected.append(Rejected(item=item.path, reason=str(exc)))
            continue
        split = assign_split(item.sha256, ratios)
        writers[split].write(make_example(encode_png(pixels), item.sha256, label_index[item.label]))
        counts[split][item.label] += 1

    shard_hashes = {}
    for split in SPLITS:
        for shard in writers[split].finish():
            shard_hashes[shard.name] = storage.sha256_file(shard)
            storage.write_bytes(storage.join(out, shard.name), shard.read_bytes())
            shard.unlink()
    staging.rmdir()

    data_hash = hashlib.sha256(
        "".join(f"{name} {digest}\n" for name, digest in sorted(shard_hashes.items())).encode()
        + "\n".join(labels).encode()
    ).hexdigest()
    stats = {
        "dataset": dataset,
        "data_hash": data_hash,
        "labels": labels,
        "preprocess": spec.model_dump(),
        "totals": {split: sum(counts[split].values()) for split in SPLITS},
        "counts": {split: {label: counts[split][label] for label in labels} for split in SPLITS},
        "rejected": [r.model_dump() for r in rejected],
        "shards": shard_hashes,
    }
    storage.write_json(storage.join(out, LABELS), labels)
    storage.write_json(storage.join(out, PREPROCESS), spec.model_dump())
    # stats.json last: its presence marks a complete output.
    storage.write_json(storage.join(out, STATS), stats)
    return stats
