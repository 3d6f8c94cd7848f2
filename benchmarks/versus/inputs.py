"""The trainer's input pipeline vs `keras.utils.image_dataset_from_directory`.

Two workloads: the default digits (`make run` writes `data/raw/digits` and
`data/processed/digits`; 16×16 grayscale) and 5,000 photo-like 128×128 JPEGs
(`benchdata.write_photo_store`), processed by the real processor at image size 128
into PNG TFRecord shards for ours, read as JPEG files from the class folders by Keras.

- Ours: `trainer.data.make_dataset` on the processed train split, as the train stage
  calls it (shuffled, `train.cache_mb` and the other settings from params.yaml), and
  consumed as `fit` consumes it there: one iterator over `dataset.repeat()`, an epoch
  being `steps_per_epoch` batches.
- Keras, with the same shuffling semantics as ours (a new order every epoch):
  `image_dataset_from_directory(raw, image_size, batch_size=None, shuffle=True)
  .cache().shuffle(N).batch(64).prefetch(AUTOTUNE)`, each epoch a new pass (as `fit`
  iterates a finite dataset). These are the main lines.
- Keras as commonly written, `image_dataset_from_directory(…, batch_size=64)
  .cache().prefetch(AUTOTUNE)`: its cache holds the batches, so every epoch after the
  first replays the first epoch's order and copies nothing. The `_vs_replay` lines
  compare with it; it is not the same training (no reshuffling).

"first_epoch": from calling the constructor to the end of the first full pass
(images per second of that time); "steady": the mean rate of epochs 2..N. Each
round builds every dataset afresh; one untimed warm-up of each side first takes the
process's one-off costs (thread pools, the first traced function) off both.

TensorFlow is imported through the trainer's `quiet_tensorflow_import`, as the `mega`
CLI does: its native start-up lines (absl, oneDNN, the CUDA probe) are filtered out
of stderr for the rest of the process, and any other line passes.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from versus.common import alternate, announce, ratio_line, unavailable_line

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchdata, beside versus

if TYPE_CHECKING:
    import tensorflow as tf

REPO = Path(__file__).resolve().parents[2]
PHOTOS = 5_000
PHOTO_SIZE = 128
PEER = "image_dataset_from_directory"
RESHUFFLED, REPLAY = f"{PEER} (reshuffled)", f"{PEER} (cache replay)"
# Epochs per run: the first, then the steady ones (an epoch of the digits takes ~20 ms).
EPOCHS = {"digits": 11, "photos128": 6}


@dataclass(frozen=True)
class Workload:
    """One data set as both sides read it."""

    name: str  # digits | photos128
    processed: Path  # the processor's output (ours)
    raw_images: Path  # class folders of the raw files (Keras)
    color_mode: str  # grayscale | rgb
    image_size: int


@dataclass
class Rates:
    """Images per second of each run: the first epoch (with the build) and the steady ones."""

    first: list[float]
    steady: list[float]


def timed_epochs(batches: Iterator[tuple[tf.Tensor, ...]], steps: int, epochs: int) -> list[float]:
    """Seconds of each of `epochs` runs of `steps` batches drawn from `batches`."""
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        for _ in range(steps):
            next(batches)
        seconds.append(time.perf_counter() - started)
    return seconds


def ours(work: Workload, epochs: int) -> tuple[float, float]:
    """`(first-epoch rate with the build, steady rate)` of `make_dataset`, as training reads it."""
    from common.contracts import Preprocess, Stats
    from common.params import load_params
    from trainer.data import make_dataset, steps_per_epoch

    cfg = load_params(REPO / "params.yaml").train
    started = time.perf_counter()
    spec = Preprocess.read(str(work.processed / "preprocess.json"))
    count = Stats.read(str(work.processed / "stats.json")).totals["train"]
    dataset = make_dataset(
        str(work.processed),
        "train",
        spec=spec,
        batch_size=cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        count=count,
        cache_mb=cfg.cache_mb,
        shuffle_buffer=cfg.shuffle_buffer,
    )
    batches = iter(dataset.repeat())
    steps = steps_per_epoch(count, cfg.batch_size)
    timed_epochs(batches, steps, 1)
    first = time.perf_counter() - started  # the build, the iterator and the first pass
    steady = timed_epochs(batches, steps, epochs - 1)
    return count / first, count * len(steady) / sum(steady)


def keras_side(work: Workload, epochs: int, *, reshuffle: bool) -> tuple[float, float]:
    """The same two rates of Keras' loader: `.cache().prefetch()`, or reshuffling each epoch."""
    import keras
    import tensorflow as tf

    started = time.perf_counter()
    dataset = keras.utils.image_dataset_from_directory(
        work.raw_images,
        image_size=(work.image_size, work.image_size),
        color_mode=work.color_mode,
        batch_size=None if reshuffle else 64,
        shuffle=True,
        seed=42,
        verbose=False,
    )
    if reshuffle:
        count = int(dataset.cardinality())
        dataset = dataset.cache().shuffle(count, reshuffle_each_iteration=True).batch(64)
    else:
        dataset = dataset.cache()
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    seconds, count = [], 0
    for _ in range(epochs):
        count = 0
        for _, labels in dataset:
            count += int(labels.shape[0])
        seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
    return count / seconds[0], count * (epochs - 1) / sum(seconds[1:])


def compare_workload(work: Workload, rounds: int) -> list[str]:
    """The first-epoch and steady lines of one workload."""
    epochs = EPOCHS[work.name]
    runs: dict[str, Callable[[], tuple[float, float]]] = {
        "ours": lambda: ours(work, epochs),
        "keras": lambda: keras_side(work, epochs, reshuffle=False),
        "keras_reshuffling": lambda: keras_side(work, epochs, reshuffle=True),
    }
    rates = {name: Rates([], []) for name in runs}

    def side(name: str) -> Callable[[], float]:
        def run() -> float:
            first, steady = runs[name]()
            rates[name].first.append(first)
            rates[name].steady.append(steady)
            return first

        return run

    alternate({name: side(name) for name in runs}, rounds, announce(work.name, rounds))
    prefix = f"input_{work.name}"
    mine, same, replay = rates["ours"], rates["keras_reshuffling"], rates["keras"]
    return [
        ratio_line(f"{prefix}_first_epoch", mine.first, same.first, RESHUFFLED),
        ratio_line(f"{prefix}_steady", mine.steady, same.steady, RESHUFFLED),
        ratio_line(f"{prefix}_first_epoch_vs_replay", mine.first, replay.first, REPLAY),
        ratio_line(f"{prefix}_steady_vs_replay", mine.steady, replay.steady, REPLAY),
    ]


def make_photos(folder: Path) -> Workload:
    """The photo workload: raw JPEGs, and the processor's shards of them at 128×128 RGB."""
    from benchdata import write_photo_store

    from common.params import ProcessParams
    from processor.process import process

    images = write_photo_store(folder / "raw", PHOTOS, PHOTO_SIZE)
    params = ProcessParams(image_size=PHOTO_SIZE, color_mode="rgb")
    process(str(folder / "raw"), str(folder / "processed"), params, "photos")
    return Workload("photos128", folder / "processed", images, "rgb", PHOTO_SIZE)


def warm_up(work: Workload) -> None:
    """One untimed run of each side: the process's one-off start-up costs fall on neither."""
    ours(work, 2)
    keras_side(work, 2, reshuffle=False)
    keras_side(work, 2, reshuffle=True)


def compare(rounds: int) -> list[str]:
    """Lines for the digits and the 128×128 photos, first epoch and steady."""
    from trainer.quiet import quiet_tensorflow_import

    digits = Workload(
        "digits", REPO / "data/processed/digits", REPO / "data/raw/digits/images", "grayscale", 16
    )
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-inputs-") as tmp:
        photos = make_photos(Path(tmp))  # before TensorFlow: the processor then forks
        quiet_tensorflow_import()
        if (digits.processed / "stats.json").exists() and digits.raw_images.is_dir():
            warm_up(digits)
            lines += compare_workload(digits, rounds)
        else:
            lines.append(unavailable_line("input_digits", "no data/processed/digits: `make run`"))
        lines += compare_workload(photos, rounds)
    return lines
