"""The TensorFlow-free writer must produce exactly what TensorFlow writes and reads."""

from pathlib import Path

import pytest
import tensorflow as tf

from common.tfrecord import TFRecordWriter, make_example, parse_examples


def tf_example(png: bytes, sha256: str, label: int) -> bytes:
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        "image/sha256": tf.train.Feature(bytes_list=tf.train.BytesList(value=[sha256.encode()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    ("png", "label"), [(b"", 0), (b"\x89PNG" + bytes(range(256)), 9), (b"x" * 70_000, 123_456)]
)
def test_example_bytes_equal_tensorflows(png: bytes, label: int) -> None:
    assert make_example(png, "f" * 64, label) == tf_example(png, "f" * 64, label)


def test_record_files_equal_tensorflows(tmp_path: Path) -> None:
    records = [make_example(b"p" * n, "a" * 64, n) for n in range(40)]
    with TFRecordWriter(tmp_path / "ours.tfrecord") as ours:
        for record in records:
            ours.write(record)
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as theirs:
        for record in records:
            theirs.write(record)
    assert (tmp_path / "ours.tfrecord").read_bytes() == (tmp_path / "tf.tfrecord").read_bytes()


def test_gzip_records_read_back_in_tensorflow(tmp_path: Path) -> None:
    pixels = tf.constant([[[7], [200]], [[9], [100]]], dtype=tf.uint8)
    png = tf.io.encode_png(pixels).numpy()
    with TFRecordWriter(tmp_path / "x.tfrecord", gzip_compressed=True) as writer:
        writer.write(make_example(png, "c" * 64, 4))
        writer.write(make_example(png, "d" * 64, 6))
    records = tf.data.TFRecordDataset(str(tmp_path / "x.tfrecord"), compression_type="GZIP")
    [batch] = records.batch(8)
    images, labels = parse_examples(batch, channels=1, image_size=2)
    assert images.shape == (2, 2, 2, 1) and images.dtype == tf.uint8
    assert images.numpy()[1].ravel().tolist() == [7, 200, 9, 100]
    assert labels.numpy().tolist() == [4, 6]
    with pytest.raises(tf.errors.InvalidArgumentError):
        parse_examples(batch, channels=1, image_size=3)  # not the size the split promises


@pytest.mark.parametrize("gzip_compressed", [False, True])
def test_reader_reads_what_tensorflow_writes(tmp_path: Path, gzip_compressed: bool) -> None:
    from common.tfrecord import read_records

    records = [make_example(b"q" * n, "e" * 64, n) for n in (0, 1, 300, 70_000)]
    options = tf.io.TFRecordOptions(compression_type="GZIP" if gzip_compressed else "")
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord"), options) as writer:
        for record in records:
            writer.write(record)
    data = (tmp_path / "tf.tfrecord").read_bytes()
    assert read_records(data, gzip_compressed) == records
    assert read_records(b"") == []


def test_reader_refuses_truncated_and_corrupt_files(tmp_path: Path) -> None:
    from common.tfrecord import TFRecordError, read_records

    with TFRecordWriter(tmp_path / "x.tfrecord") as writer:
        writer.write(make_example(b"png", "a" * 64, 1))
        writer.write(make_example(b"png", "b" * 64, 2))
    data = (tmp_path / "x.tfrecord").read_bytes()
    with pytest.raises(TFRecordError, match="truncated"):
        read_records(data[:-3])  # the last record's data CRC is cut
    with pytest.raises(TFRecordError, match="truncated record header"):
        read_records(data + b"\x01\x02")
    flipped = bytearray(data)
    flipped[20] ^= 0xFF  # inside the first record's data
    with pytest.raises(TFRecordError, match="data checksum mismatch in the record at byte 0"):
        read_records(bytes(flipped))
    flipped = bytearray(data)
    flipped[0] ^= 0x01  # the first length: its CRC no longer matches
    with pytest.raises(TFRecordError, match="corrupt or truncated record at byte 0"):
        read_records(bytes(flipped))


def test_reader_refuses_a_damaged_gzip_stream(tmp_path: Path) -> None:
    import gzip

    from common.tfrecord import TFRecordError, read_records

    with TFRecordWriter(tmp_path / "x.tfrecord", gzip_compressed=True) as writer:
        for index in range(50):
            writer.write(make_example(bytes(range(256)) * 4, f"{index:064}", index))
    data = (tmp_path / "x.tfrecord").read_bytes()
    assert len(read_records(data, gzip_compressed=True)) == 50
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    trailer = bytearray(data)
    trailer[-6] ^= 0xFF  # the stream's CRC-32
    damaged = {
        "cut": data[: len(data) // 2],  # EOFError
        "trailer": bytes(trailer),  # BadGzipFile: CRC check failed
        "flipped": bytes(flipped),  # zlib.error, or the CRC check
        "not gzip": gzip.decompress(data),  # BadGzipFile: not a gzipped file
    }
    for name, stored in damaged.items():
        with pytest.raises(TFRecordError, match="not a valid GZIP stream") as raised:
            read_records(stored, gzip_compressed=True)
        assert raised.value.__cause__ is not None, name
