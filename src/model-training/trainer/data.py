"""tf.data input from the processed TFRecord shards."""

from __future__ import annotations

import tensorflow as tf

from common import storage
from common.contracts import STATS
from common.tfrecord import parse_example


def shard_paths(data: str, split: str) -> list[str]:
    """The split's shard files, sorted; local folders and gs:// alike."""
    return [
        uri
        for uri in storage.list_files(data)
        if uri.rsplit("/", 1)[-1].startswith(f"{split}-") and uri.endswith(".tfrecord")
    ]


def make_dataset(
    data: str,
    split: str,
    *,
    channels: int,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    count: int | None = None,
) -> tf.data.Dataset:
    """Batches of `(float32 pixels [B, H, W, C], int64 labels [B])`; `count`: the split size."""
    paths = shard_paths(data, split)
    if not paths:
        raise FileNotFoundError(f"no {split} shards in {data}; run the process stage first")
    stats = storage.read_json(storage.join(data, STATS))
    compression = "GZIP" if stats.get("compression") == "gzip" else ""
    dataset = tf.data.TFRecordDataset(
        paths, compression_type=compression, num_parallel_reads=tf.data.AUTOTUNE
    )
    if shuffle:
        dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)

    def _decode(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image, label = parse_example(serialized, channels)
        return tf.cast(image, tf.float32), label

    dataset = dataset.map(_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if count is not None:
        # A known length lets Keras size epochs and progress without a warm-up pass.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
