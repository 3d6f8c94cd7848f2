"""Shard files of one split, written under temporary names and renamed once complete."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from common.contracts import shard_name
from common.tfrecord import TFRecordWriter


@dataclass
class ShardWriter:
    """Writes one split's examples into shards of about `target_bytes` under temporary names."""

    folder: Path
    split: str
    target_bytes: int
    compression: str
    parts: list[Path] = field(default_factory=list)
    _writer: TFRecordWriter | None = None
    _bytes: int = 0

    def write(self, record: bytes) -> None:
        if self._writer is None or self._bytes >= self.target_bytes:
            self._close_current()
            part = self.folder / f".{self.split}-{len(self.parts):05d}.partial"
            self.parts.append(part)
            self._writer = TFRecordWriter(part, gzip_compressed=self.compression == "gzip")
            self._bytes = 0
        self._writer.write(record)
        self._bytes += len(record)

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self) -> list[Path]:
        """Rename the parts to `<split>-NNNNN-of-MMMMM.tfrecord` once the count is known."""
        self._close_current()
        final = []
        for index, part in enumerate(self.parts):
            target = self.folder / shard_name(self.split, index, len(self.parts))
            os.replace(part, target)
            final.append(target)
        return final
