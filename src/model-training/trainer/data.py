"""tf.data input from the processed TFRecord shards.

Two ways through, chosen by whether the decoded split fits in `cache_mb`:

- In memory: the split is read and decoded once, when the dataset is made, into one
  uint8 array (`load_split`: whole shard files unframed in Python, one vectorized
  parse, PNG decodes on every core). Each epoch is then a fresh permutation of the
  indices, batched, and each batch gathered from the array in one op: no
  per-example work in `tf.data`, and every epoch a full reshuffle.
- Streamed: shard files (shuffled when training) → interleaved parallel reads → the
  serialized records shuffled (the buffer holds compressed bytes, not pixels) →
  batches → one vectorized parse and parallel decodes per batch → prefetch.

Batches stay uint8: the model casts and rescales them itself, so the host moves a
quarter of the bytes float32 would take.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from common import storage
from common.contracts import STATS, Preprocess, Stats
from common.tfrecord import (
    IMAGE,
    LABEL,
    SHA256,
    TFRecordError,
    feature_spec,
    parse_examples,
    parse_examples_with_ids,
    read_records,
)
from trainer.inputs import RERUN_PROCESS, InputError, shard_paths

# Serialized records in, `(uint8 pixels [B, H, W, C], int64 labels [B])` out (and with
# ids, string sha256 [B] third).
DecodeBatch = Callable[[tf.Tensor], tuple[tf.Tensor, ...]]

# Enough shards in flight to hide per-file latency (gs://) without a thread per shard.
MAX_PARALLEL_SHARDS = 16
# What TensorFlow says of a damaged shard (DataLossError): its TFRecord reader, or zlib
# for a GZIP shard. A damaged checkpoint raises DataLossError too, in other words, and
# passes unchanged: that one is not the data's fault.
DAMAGED_RECORD = re.compile(r"(corrupted|truncated) record at \d+|inflate\(\) failed with [^\[\n]+")
# What `assert_cardinality` says (FailedPreconditionError) when the shards hold other
# than the count stats.json gives: a shard cut at a record boundary, or one left over.
MISCOUNTED = re.compile(r"expected to contain \d+ elements but contained (only|at least) \d+")


@contextlib.contextmanager
def damaged_shards_as_input_errors(data: str) -> Iterator[None]:
    """Within: a damaged shard of the processed folder `data` is an `InputError` that
    names it and says to re-run the process stage.

    TensorFlow finds the damage only when the record is read: while `fit`, an
    evaluation or a calibration iterates a streamed dataset (a DataLossError for a
    failed checksum or a cut record, a FailedPreconditionError for a record count
    that is not stats.json's; neither names a file, so the message names `data`), or
    in `load_split` (`TFRecordError`, which names the shard). Any other error passes
    unchanged.
    """
    try:
        yield
    except tf.errors.DataLossError as exc:
        found = DAMAGED_RECORD.search(exc.message or "")
        if found is None:
            raise
        damage = found[0].strip().rstrip(".")
        raise InputError(f"{data}: a shard is damaged ({damage}); {RERUN_PROCESS}") from exc
    except tf.errors.FailedPreconditionError as exc:
        found = MISCOUNTED.search(exc.message or "")
        if found is None:
            raise
        raise InputError(
            f"{data}: the shards do not hold the examples stats.json counts ({found[0]}); "
            + RERUN_PROCESS
        ) from exc
    except TFRecordError as exc:
        raise InputError(f"{exc}; {RERUN_PROCESS}") from exc


def build_pipeline(
    paths: list[str],
    decode_batch: DecodeBatch,
    *,
    batch_size: int,
    compression: str = "",
    shuffle: bool = False,
    seed: int = 0,
    count: int | None = None,
    shuffle_buffer: int = 10_000,
) -> tf.data.Dataset:
    """Batches of `(uint8 pixels [B, H, W, C], int64 labels [B])` from TFRecord `paths`, streamed.

    Every epoch reads and decodes the shards again; when training (`shuffle`), the
    serialized records pass a `shuffle_buffer` of compressed bytes before decoding.
    """
    files = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    records = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=compression),
        cycle_length=min(len(paths), MAX_PARALLEL_SHARDS),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if count is not None:
        # A known length lets Keras size epochs and progress without a warm-up pass.
        records = records.apply(tf.data.experimental.assert_cardinality(count))
    if shuffle:
        buffer = min(shuffle_buffer, count) if count else shuffle_buffer
        records = records.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    decoded = records.batch(batch_size).map(decode_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return decoded.prefetch(tf.data.AUTOTUNE)


def load_split(
    paths: list[str], spec: Preprocess, *, gzip_compressed: bool = False, with_ids: bool = False
) -> tuple[tf.Tensor, ...]:
    """Every example of the shards `paths`: tensors `(uint8 [N, S, S, C], int64 [N])`.

    With `with_ids`, the records' sha256 (string `[N]`) third. Records keep the shards' order.
    The shards are unframed in Python and parsed in one call: for a small split a
    `tf.data` pass over the files would cost more to set up than the reading.

    Raises:
        TFRecordError: a shard is truncated or fails its checksums (the message names it).
        tf.errors.InvalidArgumentError: an image is not `spec.shape` once decoded.
    """
    records: list[bytes] = []
    for path in paths:
        try:
            records += read_records(storage.read_bytes(path), gzip_compressed)
        except TFRecordError as exc:
            raise TFRecordError(f"{path}: the shard is damaged ({exc})") from exc
    keys = (IMAGE, LABEL, SHA256) if with_ids else (IMAGE, LABEL)
    wanted = feature_spec()
    parsed = tf.io.parse_example(tf.constant(records), {key: wanted[key] for key in keys})
    del records
    images = decode_pngs(parsed[IMAGE], spec)
    return (images, *(parsed[key] for key in keys[1:]))


def decode_pngs(encoded: tf.Tensor, spec: Preprocess) -> tf.Tensor:
    """PNG bytes (string `[N]`) decoded into one uint8 tensor `[N, S, S, C]` of `spec`.

    One decode per image, in parallel on every core; the images are gathered into a
    single batch, so the whole split is one element and one copy. (A batched
    `tf.map_fn` of the decodes took 2–3 times as long for 128×128 images.)

    Raises:
        tf.errors.InvalidArgumentError: an image is not `spec.shape` once decoded (the
            processor writes one size per folder: the folder and its spec disagree).
    """
    shape = list(spec.shape)
    count = int(encoded.shape[0])
    if count == 0:
        return tf.zeros([0, *shape], tf.uint8)

    def decode(data: tf.Tensor) -> tf.Tensor:
        return tf.ensure_shape(tf.io.decode_png(data, channels=spec.channels), shape)

    images = tf.data.Dataset.from_tensor_slices(encoded).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE
    )
    batch: tf.Tensor = next(iter(images.batch(count)))
    return batch


def in_memory(
    arrays: tuple[np.ndarray | tf.Tensor, ...],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches gathered from `arrays` (all of the same length N), reshuffled every epoch.

    Tensors are used as they are; NumPy arrays are copied into tensors once.

    Each pass over the dataset (each epoch of a `repeat`) draws a new permutation of
    the N indices when `shuffle` (the sequence of permutations is fixed by `seed`),
    and keeps them in order otherwise; each batch is one gather per array.
    """
    tensors = tuple(tf.convert_to_tensor(array) for array in arrays)
    count = int(tensors[0].shape[0])
    indices = tf.data.Dataset.range(count)
    if shuffle:
        indices = indices.shuffle(count, seed=seed, reshuffle_each_iteration=True)

    def gather(batch: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return tuple(tf.gather(tensor, batch) for tensor in tensors)

    batches = indices.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)


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

    `spec` is the folder's preprocess.json (the caller has read it). When the decoded
    split takes at most `cache_mb` MB it is decoded here, before this returns, and
    held in memory (`in_memory`; `shuffle_buffer` is then unused: each epoch is a
    full permutation); otherwise it is streamed (`build_pipeline`). With `with_ids`,
    each batch also carries the records' sha256 (string `[B]`) as a third element.

    Streamed, the split is asserted to hold `count` (else stats.json's total) records:
    iterating it raises FailedPreconditionError when it does not (see
    `damaged_shards_as_input_errors`).

    Raises:
        FileNotFoundError: the split has no shards.
        InputError: the cached split does not hold that many examples.
        TFRecordError: a cached shard is damaged.
        tf.errors.InvalidArgumentError: a cached image is not the spec's size.
    """
    paths = shard_paths(data, split)
    if not paths:
        raise FileNotFoundError(f"no {split} shards in {data}; run the process stage first")
    stats = Stats.read(storage.join(data, STATS))
    total = count if count is not None else stats.totals.get(split)
    if total and fits_in_cache(total, spec, cache_mb):
        arrays = load_split(
            paths, spec, gzip_compressed=stats.compression == "gzip", with_ids=with_ids
        )
        held = int(arrays[0].shape[0])
        if held != total:
            raise InputError(
                f"{data}: the {split} shards hold {held} examples, not {total} as stats.json "
                f"counts; {RERUN_PROCESS}"
            )
        return in_memory(arrays, batch_size, shuffle=shuffle, seed=seed)
    parse = parse_examples_with_ids if with_ids else parse_examples

    def _decode(serialized: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return parse(serialized, spec.channels, spec.image_size)

    return build_pipeline(
        paths,
        _decode,
        batch_size=batch_size,
        compression="GZIP" if stats.compression == "gzip" else "",
        shuffle=shuffle,
        seed=seed,
        count=total,
        shuffle_buffer=shuffle_buffer,
    )
