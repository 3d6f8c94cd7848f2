"""tf.data input from the processed TFRecord shards.

The pipeline: shard files (shuffled when training) → interleaved parallel reads →
batches of serialized records → one vectorized parse per batch and parallel PNG
decodes → prefetch. Batches stay uint8: the model casts and rescales them itself,
so the host moves a quarter of the bytes float32 would take.

When a split fits in memory, its decoded pixels are cached once and every epoch
after the first only shuffles and batches them. Otherwise the serialized records
are shuffled before decoding, so the shuffle buffer holds compressed bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from common import storage
from common.contracts import STATS, Preprocess, Stats
from common.tfrecord import parse_examples, parse_examples_with_ids
from trainer.inputs import shard_paths

# Serialized records in, `(uint8 pixels [B, H, W, C], int64 labels [B])` out (and with
# ids, string sha256 [B] third).
DecodeBatch = Callable[[tf.Tensor], tuple[tf.Tensor, ...]]

# Enough shards in flight to hide per-file latency (gs://) without a thread per shard.
MAX_PARALLEL_SHARDS = 16


def build_pipeline(
    paths: list[str],
    decode_batch: DecodeBatch,
    *,
    batch_size: int,
    compression: str = "",
    shuffle: bool = False,
    seed: int = 0,
    count: int | None = None,
    cache: bool = False,
    shuffle_buffer: int = 10_000,
) -> tf.data.Dataset:
    """Batches of `(uint8 pixels [B, H, W, C], int64 labels [B])` from TFRecord `paths`."""
    files = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    records = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=compression),
        cycle_length=min(len(paths), MAX_PARALLEL_SHARDS),
        num_parallel_calls=tf.data.AUTOTUNE,
    )

    def decoded(dataset: tf.data.Dataset) -> tf.data.Dataset:
        return dataset.batch(batch_size).map(decode_batch, num_parallel_calls=tf.data.AUTOTUNE)

    # Cached: decode in batches once, then keep single examples so each epoch reshuffles.
    dataset = decoded(records).unbatch().cache() if cache else records
    if count is not None:
        # A known length lets Keras size epochs and progress without a warm-up pass.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    if shuffle:
        buffer = min(shuffle_buffer, count) if count else shuffle_buffer
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size) if cache else decoded(dataset)
    return dataset.prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(count: int, batch_size: int) -> int:
    """Batches in one pass over `count` examples (the last one may be short)."""
    return -(-count // batch_size)


def fits_in_cache(count: int, spec: Preprocess, cache_mb: float) -> bool:
    """Whether `count` decoded uint8 images of `spec` take at most `cache_mb` MB."""
    return cache_mb > 0 and count * spec.image_size**2 * spec.channels <= cache_mb * 1e6


def make_dataset(
    data: str,
    split: str,
    *,
    spec: Preprocess,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    count: int | None = None,
    cache_mb: float = 0.0,
    shuffle_buffer: int = 10_000,
    with_ids: bool = False,
) -> tf.data.Dataset:
    """The `split` of the processed folder `data`; `count`: the split size (from stats.json).

    `spec` is the folder's preprocess.json (the caller has read it). The decoded
    split is cached in memory when it takes at most `cache_mb` MB. With `with_ids`,
    each batch also carries the records' sha256 (string `[B]`) as a third element.
    """
    paths = shard_paths(data, split)
    if not paths:
        raise FileNotFoundError(f"no {split} shards in {data}; run the process stage first")
    stats = Stats.read(storage.join(data, STATS))
    compression = "GZIP" if stats.compression == "gzip" else ""
    total = count if count is not None else stats.totals.get(split)
    cache = bool(total) and fits_in_cache(int(total or 0), spec, cache_mb)
    parse = parse_examples_with_ids if with_ids else parse_examples

    def _decode(serialized: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return parse(serialized, spec.channels, spec.image_size)

    return build_pipeline(
        paths,
        _decode,
        batch_size=batch_size,
        compression=compression,
        shuffle=shuffle,
        seed=seed,
        count=count,
        cache=cache,
        shuffle_buffer=shuffle_buffer,
    )
