"""Raw store → split, sharded TFRecords with labels, stats and the preprocessing spec."""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from common import storage
from common.contracts import (
    LABELS,
    MANIFEST,
    PREPROCESS,
    SPLITS,
    STATS,
    ManifestItem,
    Preprocess,
    Rejected,
    Split,
    Stats,
    read_manifest,
)
from common.images import MAX_BYTES, MAX_PIXELS
from common.params import ProcessParams
from common.tfrecord import make_example
from processor.dedup import NearDuplicateIndex
from processor.shards import ShardWriter
from processor.transform import Job, Outcome, transform

# Items handed to the pool at a time: bounds memory whatever the data set's size.
WINDOW = 512


class ProcessError(ValueError):
    """The data cannot be processed as asked; the message says why and what to do."""


def assign_split(sha256: str, ratios: dict[str, float]) -> Split:
    """Deterministic split from the content hash: adding items never moves old ones."""
    position = int(sha256[:16], 16) / float(1 << 64)
    if position < ratios["train"]:
        return "train"
    if position < ratios["train"] + ratios["val"]:
        return "val"
    return "test"


def _outcomes(
    jobs: Iterable[Job], work: Callable[[Job], Outcome], workers: int
) -> Iterator[Outcome]:
    """Run `work` over `jobs` in order, on a process pool when `workers` > 1."""
    if workers <= 1:
        yield from map(work, jobs)
        return
    # fork starts workers in milliseconds; but a process with TensorFlow loaded
    # (a test session, a notebook) has native threads and must not fork, so it
    # spawns (about a second per worker). The processor itself never loads TF.
    method = "spawn" if "tensorflow" in sys.modules else "fork"
    context = multiprocessing.get_context(method)
    with context.Pool(workers) as pool:
        iterator = iter(jobs)
        while window := list(itertools.islice(iterator, WINDOW)):
            yield from pool.imap(work, window, chunksize=16)


@dataclass(frozen=True)
class Plan:
    """What `process` will do, decided from the manifest before any image is opened."""

    labels: list[str]  # sorted; a label's index is its class number
    spec: Preprocess
    jobs: list[Job]  # one per distinct image (sha256), in manifest order
    duplicates: list[Rejected]  # exact copies of an earlier item, never opened


@dataclass(frozen=True)
class Shards:
    """What the transform step kept and wrote into the staging folder."""

    counts: dict[str, Counter[str]]  # split → label → examples
    rejected: list[Rejected]  # unreadable, invalid or near-duplicate items
    hashes: dict[str, str]  # shard file name → sha256 of its bytes


def process(
    raw: str,
    out: str,
    params: ProcessParams,
    dataset: str,
    workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
) -> Stats:
    """Process the raw store at `raw` into `out`; returns the stats written to stats.json.

    `max_pixels` and `max_bytes` are the collector's limits (collect.max_pixels,
    collect.max_bytes): what it kept is not refused here for its size, and they are
    recorded in preprocess.json so that serving accepts the same files.

    Raises:
        ProcessError: the manifest is missing or malformed, or the data cannot train
            a classifier (see `plan` and `_check_counts`); `out` is left as it was.
    """
    planned = plan(raw, params, max_pixels, max_bytes)
    # The whole output is built beside `out` and swapped in at the end, so neither a
    # failed run nor a re-run ever leaves a partial or mixed data set. stats.json goes
    # last: it is the completion marker on gs://, where nothing renames.
    with storage.building(out, last=STATS) as staging:
        shards = write_shards(planned, staging, params, workers or os.cpu_count() or 1)
        rejected = [*planned.duplicates, *shards.rejected]
        labels, spec = planned.labels, planned.spec
        stats = _stats(dataset, labels, spec, params, shards.counts, rejected, shards.hashes)
        storage.write_json(staging / LABELS, labels)
        spec.write(staging / PREPROCESS)
        stats.write(staging / STATS)
    return stats


def _read_items(raw: str) -> list[ManifestItem]:
    """The raw store's manifest rows; ProcessError when missing, malformed or empty."""
    try:
        items = read_manifest(storage.join(raw, MANIFEST))
    except FileNotFoundError as exc:
        raise ProcessError(
            f"no {MANIFEST} in {raw}; run the collect stage first (mega collect)"
        ) from exc
    except ValueError as exc:  # a malformed row: the message names file and line
        raise ProcessError(f"{exc}; re-run the collect stage to rewrite the manifest") from exc
    if not items:
        raise ProcessError(f"{raw}: the manifest lists no items; run the collect stage first")
    return items


def plan(raw: str, params: ProcessParams, max_pixels: int, max_bytes: int) -> Plan:
    """The labels, the preprocessing spec and one job per distinct image of `raw`.

    Exact duplicates (same sha256) are rejected here, with the conflict named when
    the copies carry different labels.

    Raises:
        ProcessError: no usable manifest, or fewer than two classes.
    """
    items = _read_items(raw)
    labels = sorted({item.label for item in items})
    _check_classes(raw, labels)
    spec = Preprocess(
        image_size=params.image_size,
        color_mode=params.color_mode,
        resize=params.resize,
        min_size=params.min_size,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
    )
    duplicates: list[Rejected] = []
    seen: dict[str, str] = {}  # sha256 → label of the copy that is kept
    jobs = []
    for item in items:
        kept_label = seen.get(item.sha256)
        if kept_label is not None:
            reason = "exact duplicate of an earlier item"
            if kept_label != item.label:
                reason = (
                    f"the same image is labelled {kept_label!r} and {item.label!r}; "
                    f"kept as {kept_label!r}: fix the label at the source"
                )
            duplicates.append(Rejected(item=item.path, reason=reason))
            continue
        seen[item.sha256] = item.label
        jobs.append(Job(storage.join(raw, item.path), item.path, item.label, item.sha256))
    return Plan(labels=labels, spec=spec, jobs=jobs, duplicates=duplicates)


def _screen(outcome: Outcome, near: NearDuplicateIndex | None) -> bytes | Rejected:
    """The PNG to keep, or why the item is not kept (invalid, or a near duplicate).

    A kept image joins `near`, so later look-alikes of it are rejected.
    """
    job = outcome.job
    if outcome.png is None:
        return Rejected(item=job.path, reason=outcome.reason or "unknown")
    if near is not None and outcome.phash is not None:
        twin = near.find(outcome.phash)
        if twin is not None:
            return Rejected(item=job.path, reason=f"near duplicate of {twin}")
        near.add(outcome.phash, job.path)
    return outcome.png


def write_shards(planned: Plan, staging: Path, params: ProcessParams, workers: int) -> Shards:
    """Transform every job on `workers` processes and write the kept ones as split shards.

    Raises:
        ProcessError: a class has too few usable items, or none in a needed split.
    """
    ratios = params.split.model_dump()
    label_index = {label: i for i, label in enumerate(planned.labels)}
    target_bytes = int(params.shard_target_mb * 1024 * 1024)
    writers = {
        split: ShardWriter(staging, split, target_bytes, params.compression) for split in SPLITS
    }
    counts: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
    rejected: list[Rejected] = []
    near = NearDuplicateIndex(params.near_duplicate_distance) if params.near_duplicates else None
    work = partial(
        transform,
        spec=planned.spec,
        with_phash=params.near_duplicates,
        png_compress_level=params.png_compress_level,
    )
    for outcome in _outcomes(planned.jobs, work, workers):
        kept = _screen(outcome, near)
        if isinstance(kept, Rejected):
            rejected.append(kept)
            continue
        job = outcome.job
        split = assign_split(job.sha256, ratios)
        writers[split].write(make_example(kept, job.sha256, label_index[job.label]))
        counts[split][job.label] += 1
    _check_counts(planned.labels, counts, params)
    hashes = {
        shard.name: storage.sha256_file(shard)
        for split in SPLITS
        for shard in writers[split].finish()
    }
    return Shards(counts=counts, rejected=rejected, hashes=hashes)


def _check_classes(raw: str, labels: list[str]) -> None:
    """Refuse, before any work, a data set that cannot train a classifier at all.

    Raises:
        ProcessError: fewer than two classes; a one-class model answers that class
            with full confidence for every image, and its test accuracy says nothing.
    """
    if len(labels) < 2:
        found = f"only 1 class ({labels[0]!r})" if labels else "no class"
        raise ProcessError(
            f"{raw}: {found}; a classifier needs at least 2 (with one it answers that class "
            "for every image). Collect images of at least one more class (one folder or "
            "label per class) and run the collect stage again."
        )


def _check_counts(
    labels: list[str], counts: dict[str, Counter[str]], params: ProcessParams
) -> None:
    """Refuse usable counts that cannot be trained and evaluated honestly.

    Every class needs `min_per_class` usable items, and at least one in train, in test
    and (unless `split.val` is 0) in val: a class absent from test is never measured
    (its recall is undefined and macro F1 silently skips it), one absent from val is
    never monitored, one absent from train is never learned.

    Raises:
        ProcessError: naming each class and what it lacks, with the fixes.
    """
    totals_by_class = {label: sum(counts[s][label] for s in SPLITS) for label in labels}
    too_few = {k: v for k, v in totals_by_class.items() if v < params.min_per_class}
    if too_few:
        listing = ", ".join(f"{label!r} ({n})" for label, n in sorted(too_few.items()))
        raise ProcessError(
            f"class(es) with fewer than min_per_class={params.min_per_class} usable items: "
            f"{listing}. Collect more images for them, remove them, or lower "
            "process.min_per_class in params.yaml."
        )
    needed = [s for s in SPLITS if s != "val" or params.split.val > 0]
    gaps = {
        label: [s for s in needed if counts[s][label] == 0]
        for label in labels
        if any(counts[s][label] == 0 for s in needed)
    }
    if gaps:
        listing = "; ".join(
            f"{label!r} has no example in {', '.join(g)}" for label, g in gaps.items()
        )
        splits = sorted({s for g in gaps.values() for s in g} - {"train"})
        raise ProcessError(
            f"the split leaves class(es) unmeasured: {listing}; every class needs examples in "
            f"{', '.join(needed)} to be trained and evaluated honestly. Collect more images "
            "for them (the split is by content hash, about "
            + ", ".join(f"{s} {getattr(params.split, s):.0%}" for s in needed)
            + ")"
            + (
                f", or raise process.split.{' and process.split.'.join(splits)} in params.yaml"
                " and lower process.split.train by as much (the ratios sum to 1)."
                if splits
                else "."
            )
        )


def _stats(
    dataset: str,
    labels: list[str],
    spec: Preprocess,
    params: ProcessParams,
    counts: dict[str, Counter[str]],
    rejected: list[Rejected],
    shard_hashes: dict[str, str],
) -> Stats:
    data_hash = hashlib.sha256(
        "".join(f"{name} {digest}\n" for name, digest in sorted(shard_hashes.items())).encode()
        + "\n".join(labels).encode()
    ).hexdigest()
    return Stats(
        dataset=dataset,
        data_hash=data_hash,
        labels=labels,
        preprocess=spec,
        compression=params.compression,
        counts={split: {label: counts[split][label] for label in labels} for split in SPLITS},
        rejected=rejected,
        shards=shard_hashes,
    )
