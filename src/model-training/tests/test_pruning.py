"""Magnitude pruning on Keras 3: the schedule, the callback's masks and `prune`."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from trainer.model import small_cnn
from trainer.pruning import (
    MagnitudePruning,
    kernel_sparsity,
    magnitude_mask,
    polynomial_sparsity,
    prunable_kernels,
    prune,
)

SHAPE = (16, 16, 1)


def test_schedule_starts_at_zero_rises_and_ends_at_target() -> None:
    values = [polynomial_sparsity(step, 0.6, 10, 50) for step in range(0, 80)]
    assert values[:11] == [0.0] * 11
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[50] == pytest.approx(0.6) and values[79] == pytest.approx(0.6)
    # Power 3: most of the pruning happens early.
    assert polynomial_sparsity(20, 0.6, 10, 50) == pytest.approx(0.6 * (1 - 0.75**3))


def test_mask_zeros_the_smallest_magnitudes_and_keeps_old_zeros() -> None:
    weights = np.array([[0.0, -3.0], [0.5, 2.0], [-0.1, 0.0]], dtype=np.float32)
    mask = magnitude_mask(weights, 0.5)
    assert mask.tolist() == [[0, 1], [1, 1], [0, 0]]


class _Watch(keras.callbacks.Callback):
    """After each batch (after the pruning callback): the sparsity and the zero pattern."""

    def __init__(self) -> None:
        super().__init__()
        self.sparsity: list[float] = []
        self.zeros: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.sparsity.append(kernel_sparsity(self.model))
        self.zeros.append([np.asarray(k) == 0 for k in prunable_kernels(self.model)])


def test_callback_reaches_target_on_every_kernel_and_keeps_zeros_zero(digit_splits) -> None:
    train, _ = digit_splits  # 22 batches an epoch
    keras.utils.set_random_seed(1)
    model = small_cnn(SHAPE, 10)
    biases_before = [np.asarray(layer.bias) for layer in model.layers if hasattr(layer, "bias")]
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    pruning = MagnitudePruning(0.7, begin_step=5, end_step=30, frequency=4)
    watch = _Watch()
    model.fit(train, epochs=2, callbacks=[pruning, watch], verbose=0)

    assert watch.sparsity[3] == 0.0  # before begin_step
    assert 0.0 < watch.sparsity[10] < 0.7
    for kernel in prunable_kernels(model):
        assert np.mean(np.asarray(kernel) == 0) == pytest.approx(0.7, abs=0.01)
    # From end_step on the mask is fixed: the same weights are zero after every batch.
    for zeros in watch.zeros[30:]:
        for now, final in zip(zeros, watch.zeros[-1], strict=True):
            assert np.array_equal(now, final)
    # A weight pruned earlier never comes back.
    for earlier, final in zip(watch.zeros[12], watch.zeros[-1], strict=True):
        assert not np.any(earlier & ~final)
    # Biases are not pruned: they train (from zeros) and none is forced back to zero.
    biases_after = [np.asarray(layer.bias) for layer in model.layers if hasattr(layer, "bias")]
    assert all(np.all(b == 0) for b in biases_before)
    assert np.mean(np.concatenate([b.ravel() for b in biases_after]) == 0) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_sparsity": 1.0, "begin_step": 0, "end_step": 10}, "target_sparsity"),
        ({"target_sparsity": -0.1, "begin_step": 0, "end_step": 10}, "target_sparsity"),
        ({"target_sparsity": 0.5, "begin_step": 10, "end_step": 10}, "begin_step < end_step"),
        ({"target_sparsity": 0.5, "begin_step": -1, "end_step": 10}, "begin_step < end_step"),
        ({"target_sparsity": 0.5, "begin_step": 0, "end_step": 10, "power": 0}, "power"),
    ],
)
def test_callback_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MagnitudePruning(**kwargs)


def test_prune_returns_a_pruned_copy_that_still_classifies(
    teacher, digit_splits, model_accuracy
) -> None:
    train, test = digit_splits
    before = [w.copy() for w in teacher.get_weights()]
    pruned = prune(
        teacher,
        train,
        test,
        target_sparsity=0.5,
        epochs=2,
        begin_fraction=0.0,
        end_fraction=0.75,
        learning_rate=1e-3,
        seed=0,
    )
    assert pruned is not teacher
    assert all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights(), strict=True))
    assert kernel_sparsity(teacher) < 0.01
    assert kernel_sparsity(pruned) == pytest.approx(0.5, abs=0.01)
    assert model_accuracy(pruned, test) >= model_accuracy(teacher, test) - 0.05


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"begin_fraction": 0.8, "end_fraction": 0.5}, "begin_fraction < end_fraction"),
        ({"end_fraction": 1.5}, "end_fraction <= 1"),
        ({"epochs": 0}, "at least one fine-tuning epoch"),
        ({"target_sparsity": 1.2}, "target_sparsity"),
    ],
)
def test_prune_rejects_bad_params_before_training(teacher, digit_splits, changes, message) -> None:
    train, _ = digit_splits
    args = {
        "target_sparsity": 0.5,
        "epochs": 1,
        "begin_fraction": 0.0,
        "end_fraction": 0.75,
        "learning_rate": 1e-3,
        "seed": 0,
    } | changes
    with pytest.raises(ValueError, match=message):
        prune(teacher, train, None, **args)


def test_prune_refuses_an_endless_dataset(teacher, digit_splits) -> None:
    train, _ = digit_splits
    with pytest.raises(ValueError, match="finite train dataset"):
        prune(
            teacher,
            train.repeat(),
            None,
            target_sparsity=0.5,
            epochs=1,
            begin_fraction=0.0,
            end_fraction=0.75,
            learning_rate=1e-3,
            seed=0,
        )


@pytest.mark.parametrize(("begin", "end"), [(0.9, 1.0), (0.99, 0.995), (0.0, 0.01)])
def test_prune_reaches_the_target_whatever_the_fractions_on_few_steps(
    teacher, digit_splits, begin: float, end: float
) -> None:
    train, _ = digit_splits
    pruned = prune(
        teacher,
        train.take(3),
        None,
        target_sparsity=0.6,
        epochs=1,
        begin_fraction=begin,
        end_fraction=end,
        learning_rate=1e-3,
        seed=0,
    )
    assert kernel_sparsity(pruned) == pytest.approx(0.6, abs=0.01)


def test_prune_refuses_an_empty_dataset(teacher, digit_splits) -> None:
    train, _ = digit_splits
    with pytest.raises(ValueError, match="empty train dataset"):
        prune(
            teacher,
            train.take(0),
            None,
            target_sparsity=0.5,
            epochs=1,
            begin_fraction=0.0,
            end_fraction=0.75,
            learning_rate=1e-3,
            seed=0,
        )
