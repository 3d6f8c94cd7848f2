"""The TFRecord schema of processed data, and its parse function.

This is common's only TensorFlow module: import it only from containers that
depend on TensorFlow (processor, trainer).
"""

from __future__ import annotations

import tensorflow as tf

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),  # PNG, uint8 [H, W, C]
    "image/sha256": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def make_example(png: bytes, sha256: str, label_index: int) -> bytes:
    """Serialize one example in the schema above."""
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        "image/sha256": tf.train.Feature(bytes_list=tf.train.BytesList(value=[sha256.encode()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label_index])),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # Features is a protobuf map: without `deterministic` its order (and so the
    # shard bytes and the data version hash) can change from run to run.
    return example.SerializeToString(deterministic=True)


def parse_example(serialized: tf.Tensor, channels: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Parse one serialized example into `(uint8 image [H, W, C], int64 label)`."""
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    image = tf.io.decode_png(parsed["image/encoded"], channels=channels)
    return image, parsed["label"]
