"""The TFRecord schema of processed data: a TensorFlow-free writer and reader, and the TF parse.

Writing needs no TensorFlow: an example is three features, serialized here in
protobuf's wire format exactly as `tf.train.Example.SerializeToString(
deterministic=True)` would (a test checks byte equality), and records are framed
with masked CRC-32C as TFRecord files require. So the processor runs without
TensorFlow; only `parse_examples`, used by the trainer, imports it. `read_records`
unframes a whole file's bytes in a few milliseconds, where a `tf.data` pass costs
tens of milliseconds to set up before it reads anything.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import google_crc32c

if TYPE_CHECKING:
    import tensorflow as tf

IMAGE = "image/encoded"  # PNG, uint8 [H, W, C]
SHA256 = "image/sha256"
LABEL = "label"


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 values are encoded as 10-byte two's complement
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    return _field(1, _field(1, value))  # Feature.bytes_list → BytesList.value


def _int64_feature(value: int) -> bytes:
    return _field(3, _field(1, _varint(value)))  # Feature.int64_list → packed value


def make_example(png: bytes, sha256: str, label_index: int) -> bytes:
    """One serialized `tf.train.Example` of the schema, map entries in key order."""
    features = {
        IMAGE: _bytes_feature(png),
        SHA256: _bytes_feature(sha256.encode()),
        LABEL: _int64_feature(label_index),
    }
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, value))
        for key, value in sorted(features.items())
    )
    return _field(1, entries)  # Example.features → Features.feature map


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordError(ValueError):
    """A TFRecord file is truncated or fails its checksums."""


def read_records(data: bytes, gzip_compressed: bool = False) -> list[bytes]:
    """The records framed in `data`, a whole TFRecord file's bytes (checksums verified).

    Raises:
        TFRecordError: a record is truncated or its length or data CRC does not match,
            or the GZIP stream is damaged.
    """
    if gzip_compressed:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise TFRecordError(f"not a valid GZIP stream ({exc})") from exc
    records: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 12 > len(data):
            raise TFRecordError(f"truncated record header at byte {offset}")
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack_from("<I", data, offset + 8)
        start, end = offset + 12, offset + 12 + length
        if length_crc != _masked_crc(header) or end + 4 > len(data):
            raise TFRecordError(f"corrupt or truncated record at byte {offset}")
        record = data[start:end]
        if struct.unpack_from("<I", data, end)[0] != _masked_crc(record):
            raise TFRecordError(f"data checksum mismatch in the record at byte {offset}")
        records.append(record)
        offset = end + 4
    return records


class TFRecordWriter:
    """Writes TFRecord files (optionally GZIP) that `tf.data.TFRecordDataset` reads."""

    def __init__(self, path: str | Path, gzip_compressed: bool = False) -> None:
        raw = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._raw = raw
        self._out: BinaryIO = (
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)  # type: ignore[assignment]
            if gzip_compressed
            else raw
        )

    def write(self, record: bytes) -> None:
        length = struct.pack("<Q", len(record))
        self._out.write(length + struct.pack("<I", _masked_crc(length)))
        self._out.write(record + struct.pack("<I", _masked_crc(record)))

    def close(self) -> None:
        if self._out is not self._raw:
            self._out.close()
        self._raw.close()

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def feature_spec() -> dict[str, tf.io.FixedLenFeature]:
    """The schema as `tf.io.parse_*` wants it (needs TF)."""
    import tensorflow as tf

    return {
        IMAGE: tf.io.FixedLenFeature([], tf.string),
        SHA256: tf.io.FixedLenFeature([], tf.string),
        LABEL: tf.io.FixedLenFeature([], tf.int64),
    }


def parse_examples(
    serialized: tf.Tensor, channels: int, image_size: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Parse a batch of serialized examples into `(uint8 [B, S, S, C], int64 [B])` (needs TF).

    One vectorized parse per batch costs far less than one parse per record; the
    PNG decodes then run in parallel inside the batch. An image of another size
    than `image_size` fails the batch (the processor writes one size per split).
    """
    parsed = _parse(serialized, channels, image_size, (IMAGE, LABEL))
    return parsed[IMAGE], parsed[LABEL]


def parse_examples_with_ids(
    serialized: tf.Tensor, channels: int, image_size: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """As `parse_examples`, plus each record's `image/sha256` (string `[B]`, hex).

    The sha256 is the record's name from the collector on (`manifest.jsonl`,
    `images/<label>/<sha256>.<ext>`), so a report can point at the raw file.
    """
    parsed = _parse(serialized, channels, image_size, (IMAGE, LABEL, SHA256))
    return parsed[IMAGE], parsed[LABEL], parsed[SHA256]


def _parse(
    serialized: tf.Tensor, channels: int, image_size: int, keys: tuple[str, ...]
) -> dict[str, tf.Tensor]:
    """Parse `keys` of a batch, with `IMAGE` decoded to uint8 `[B, S, S, C]`."""
    import tensorflow as tf

    spec = feature_spec()
    parsed = tf.io.parse_example(serialized, {key: spec[key] for key in keys})
    shape = [image_size, image_size, channels]

    def decode(data: tf.Tensor) -> tf.Tensor:
        return tf.ensure_shape(tf.io.decode_png(data, channels=channels), shape)

    images = tf.map_fn(
        decode,
        parsed[IMAGE],
        fn_output_signature=tf.TensorSpec(shape, tf.uint8),
        parallel_iterations=64,  # decodes are independent: let every core take some
    )
    return {**parsed, IMAGE: images}
