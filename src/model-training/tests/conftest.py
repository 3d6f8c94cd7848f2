"""Fixtures shared by the pruning and distillation tests: tiny digits and a trained teacher."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.model import small_cnn

# The collector's bundled digits, read as a file: a container's tests import no other
# container (tests/test_dependencies.py). 64 pixels (0..16) and the label per row.
DIGITS_CSV = Path(__file__).parents[2] / "data-collector/collector/sources/data/digits.csv.gz"

SHAPE = (16, 16, 1)
CLASSES = 10
TRAIN_COUNT = 1400


@pytest.fixture(scope="session")
def digit_splits() -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Batched (train, test) `(pixels, class id)` datasets of 16×16 gray 0–255 digits.

    The bundled 8×8 digits with each pixel doubled; the first 1400 (shuffled with a
    fixed seed) train, the other 397 test.
    """
    with gzip.open(DIGITS_CSV, "rt", encoding="ascii") as text:
        rows = np.loadtxt(text, delimiter=",")
    images, labels = rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64)
    pixels = (np.kron(images, np.ones((2, 2))) * (255.0 / 16.0))[..., None].astype(np.float32)
    train = (
        tf.data.Dataset.from_tensor_slices((pixels[:TRAIN_COUNT], labels[:TRAIN_COUNT]))
        .shuffle(TRAIN_COUNT, seed=0)
        .batch(64)
    )
    test = tf.data.Dataset.from_tensor_slices((pixels[TRAIN_COUNT:], labels[TRAIN_COUNT:]))
    return train, test.batch(64)


def accuracy(model: keras.Model, dataset: tf.data.Dataset) -> float:
    """Top-1 accuracy of the probability model `model` on the batched `dataset`."""
    right = total = 0
    for x, y in dataset:
        predicted = np.argmax(model.predict_on_batch(x), axis=-1)
        right += int(np.sum(predicted == y.numpy()))
        total += len(predicted)
    return right / total


@pytest.fixture(scope="session")
def model_accuracy() -> Callable[[keras.Model, tf.data.Dataset], float]:
    return accuracy


@pytest.fixture(scope="session")
def teacher(digit_splits: tuple[tf.data.Dataset, tf.data.Dataset]) -> keras.Model:
    """The default small_cnn trained 3 epochs on the tiny digits (≈0.95 test accuracy)."""
    train, _ = digit_splits
    keras.utils.set_random_seed(0)
    model = small_cnn(SHAPE, CLASSES)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(train, epochs=3, verbose=0)
    return model
