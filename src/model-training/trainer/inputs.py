"""Checks of what the trainer reads, made before TensorFlow is imported.

Importing TensorFlow takes seconds, so a wrong path or a malformed file found
only afterwards costs the user that wait and a cryptic error. Each check here
reads the file a stage needs and raises `InputError` with one line naming the
file, what is wrong with it, and what to do. This module must not import
TensorFlow or Keras (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from common import storage
from common.contracts import (
    LABELS,
    LINEAGE,
    OPTIMIZATION,
    PREPROCESS,
    STATS,
    TFLITE_FILE,
    TIMING_IMAGES,
    ContractError,
    Lineage,
    Metrics,
    Optimization,
    Preprocess,
    Split,
    Stats,
    is_shard,
    read_labels,
)

T = TypeVar("T")

RERUN_PROCESS = "re-run the process stage (mega run, or python -m processor) to rewrite it"
RERUN_TRAIN = "re-run the train stage (mega run, or python -m trainer train) to rewrite it"
RERUN_EVALUATE = "re-run the evaluate stage (mega run, or python -m trainer evaluate)"
RERUN_OPTIMIZE = "re-run the optimize stage (mega run, or python -m trainer optimize)"


class InputError(ValueError):
    """A file the trainer reads is missing or malformed; the message says which and the fix."""


@dataclass(frozen=True)
class ProcessedData:
    """A processed data folder that passed the checks."""

    spec: Preprocess
    labels: list[str]
    stats: Stats


def _checked(read: Callable[[str], T], uri: str, fix: str) -> T:
    """`read(uri)`, its failures as one `InputError` naming `uri` and ending with `fix`."""
    if not storage.exists(uri):
        raise InputError(f"{uri}: not found; {fix}")
    try:
        return read(uri)
    except ContractError as exc:  # names the file and what is wrong with it
        raise InputError(f"{exc}; {fix}") from exc
    except OSError as exc:  # e.g. a folder where the file should be
        raise InputError(f"{uri}: cannot be read ({exc.strerror or exc}); {fix}") from exc


def read_preprocess(folder: str, fix: str) -> Preprocess:
    """The folder's `preprocess.json`, validated."""
    return _checked(Preprocess.read, storage.join(folder, PREPROCESS), fix)


def read_class_names(folder: str, fix: str) -> list[str]:
    """The folder's `labels.json`: a non-empty JSON list of distinct class names.

    Only the file's shape is checked here (`common.contracts.read_labels`), which
    re-running the stage that wrote it can fix. How many classes there are is not: the
    processor refuses data of fewer than two classes, and the registry gate keeps a
    one-class model from production with its own reason.
    """
    return _checked(read_labels, storage.join(folder, LABELS), fix)


def _require_folder(folder: str, option: str, what: str) -> None:
    if storage.is_gcs(folder):
        return  # a prefix is not an object; its files are checked one by one
    path = Path(folder)
    if not path.exists():
        raise InputError(f"{option} {folder}: no such folder; {what}")
    if not path.is_dir():
        raise InputError(f"{option} {folder}: is a file, not a folder; {what}")


def _require_any(folder: str, option: str, names: tuple[str, ...], what: str) -> None:
    """A folder holding none of the files a stage writes is the wrong folder, not a stale
    one: say so, rather than advise re-running the stage."""
    if not any(storage.exists(storage.join(folder, name)) for name in names):
        raise InputError(f"{option} {folder}: holds none of {', '.join(names)}; {what}")


def shard_paths(data: str, split: str) -> list[str]:
    """The split's TFRecord shard files in `data`, sorted; local folders and gs:// alike."""
    return [uri for uri in storage.list_files(data) if is_shard(uri.rsplit("/", 1)[-1], split)]


def check_processed(data: str, splits: tuple[Split, ...]) -> ProcessedData:
    """Check the processed folder `data` holds what training on `splits` reads.

    Raises `InputError` for a missing folder, a missing or malformed
    `preprocess.json`, `labels.json` or `stats.json`, or a split with no
    examples or no shard files.
    """
    what = "pass the processed data folder (data/processed/<dataset>) or run mega run"
    _require_folder(data, "--data", what)
    _require_any(data, "--data", (PREPROCESS, LABELS, STATS), what)
    spec = read_preprocess(data, RERUN_PROCESS)
    labels = read_class_names(data, RERUN_PROCESS)
    stats = _checked(Stats.read, storage.join(data, STATS), RERUN_PROCESS)
    for split in splits:
        if stats.totals.get(split, 0) < 1:
            raise InputError(
                f"{storage.join(data, STATS)}: the {split} split has no examples; "
                "collect more images or change process.split in params.yaml, then re-run"
            )
        if not shard_paths(data, split):
            raise InputError(f"{data}: no {split}-*.tfrecord shards; {RERUN_PROCESS}")
    return ProcessedData(spec=spec, labels=labels, stats=stats)


def check_candidate(model: str, files: tuple[str, ...]) -> None:
    """Check the exported candidate folder `model`: its sidecars parse and `files` exist."""
    what = "pass the folder that `trainer train --out` wrote (models/candidate)"
    _require_folder(model, "--model", what)
    _require_any(model, "--model", (PREPROCESS, LABELS, LINEAGE), what)
    read_preprocess(model, RERUN_TRAIN)
    read_class_names(model, RERUN_TRAIN)
    for name in files:
        uri = storage.join(model, name)
        if name == LINEAGE:
            _checked(Lineage.read, uri, RERUN_TRAIN)
        elif not storage.exists(uri):
            raise InputError(f"{uri}: not found; {RERUN_TRAIN}")


def check_metrics(uri: str) -> Metrics:
    """Evaluate's `metrics.json`, parsed, once checked: a `test` object with `accuracy` and
    `macro_f1` in [0, 1] (other keys are kept). The one validator of that file.

    Raises `InputError` (a `ValueError`) naming the file, the problem and the fix.
    """
    fix = f"{RERUN_EVALUATE} to rewrite it"
    return _checked(Metrics.read, uri, fix)


def check_optimized(folder: Path, candidate: Path) -> tuple[Optimization, np.ndarray]:
    """The optimize stage's report in the local `folder`, every variant's file checked,
    and the test images to time them on (float32 `[N, H, W, C]`, 0–255).

    Raises `InputError` naming the file, the problem and the fix: the report missing or
    malformed, a variant whose file is not a `.tflite` beside the report, or is missing
    or empty, the folder made from another candidate than `candidate` (its float32
    variant or labels differ from the candidate's), or the timing images missing or not
    a uint8 array of images.
    """
    report_uri = str(folder / OPTIMIZATION)
    report = _checked(Optimization.read, report_uri, RERUN_OPTIMIZE)
    for row in report.variants:
        # The file must sit beside the report: a path elsewhere would publish another model.
        if row.file != Path(row.file).name or not row.file.endswith(".tflite"):
            raise InputError(
                f"{report_uri}: variant {row.name!r} names the file {row.file!r}, not a "
                f".tflite beside the report; {RERUN_OPTIMIZE}"
            )
        path = folder / row.file
        if not path.is_file() or path.stat().st_size == 0:
            raise InputError(f"{path}: variant {row.name!r}'s model is missing; {RERUN_OPTIMIZE}")
    _same_candidate(folder, report.variant(report.baseline).file, candidate)
    images = _timing_images(folder / TIMING_IMAGES)
    spec = read_preprocess(str(candidate), RERUN_TRAIN)
    if tuple(images.shape[1:]) != spec.shape:
        raise InputError(
            f"{folder / TIMING_IMAGES}: images of shape {list(images.shape[1:])}, the model "
            f"takes {list(spec.shape)} (preprocess.json); {RERUN_OPTIMIZE}"
        )
    return report, images


def _same_candidate(folder: Path, baseline_file: str, candidate: Path) -> None:
    """The stage copies the candidate's float32 `.tflite` and labels as they are: if they
    differ, the variants are of another model (optimize did not run after train)."""
    pairs = [
        (folder / baseline_file, candidate / TFLITE_FILE),
        (folder / LABELS, candidate / LABELS),
    ]
    for made, source in pairs:
        if not source.is_file():
            raise InputError(f"{source}: not found; {RERUN_TRAIN}")
        if not made.is_file() or storage.sha256_file(made) != storage.sha256_file(source):
            raise InputError(
                f"{folder}: made from another candidate than {candidate} ({made.name} is not "
                f"its {source.name}); {RERUN_OPTIMIZE}"
            )


def _timing_images(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(
            f"{path}: the test images register times the variants on are missing; {RERUN_OPTIMIZE}"
        )
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
        raise InputError(f"{path}: not a NumPy array file ({exc}); {RERUN_OPTIMIZE}") from exc
    if not isinstance(images, np.ndarray):  # an .npz archive under this name
        raise InputError(f"{path}: an archive of arrays, not one array; {RERUN_OPTIMIZE}")
    if images.dtype != np.uint8 or images.ndim != 4 or not len(images):
        raise InputError(
            f"{path}: {images.dtype} {list(images.shape)} is not a uint8 array of images "
            f"[N, H, W, C]; {RERUN_OPTIMIZE}"
        )
    return images.astype(np.float32)
