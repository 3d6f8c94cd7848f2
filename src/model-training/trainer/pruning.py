"""Magnitude pruning for Keras 3 models: a callback, a fine-tuning helper and a measure.

The TF Model Optimization toolkit (0.8.x) wraps layers of legacy tf-keras only and
cannot load this project's Keras 3 models, so the schedule and masks live here, on
plain Keras 3 APIs: the masks are numpy arrays, one per pruned kernel, re-applied
after every train batch so a pruned weight stays exactly zero whatever the optimizer
does to it. Pruned kernels are those of every Conv2D and Dense layer; biases and
every other weight are left alone.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

PRUNED_LAYERS = (keras.layers.Conv2D, keras.layers.Dense)


def prunable_kernels(model: keras.Model) -> list[keras.Variable]:
    """The kernels of every Conv2D and Dense layer in `model`, nested models included."""
    return [
        layer.kernel
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, PRUNED_LAYERS)
    ]


def kernel_sparsity(model: keras.Model) -> float:
    """Zeros over weights in `model`'s Conv2D/Dense kernels, in [0, 1] (0 when it has none)."""
    arrays = [np.asarray(kernel) for kernel in prunable_kernels(model)]
    total = sum(array.size for array in arrays)
    if total == 0:
        return 0.0
    return sum(int(np.count_nonzero(array == 0)) for array in arrays) / total


def polynomial_sparsity(
    step: int, target_sparsity: float, begin_step: int, end_step: int, power: int = 3
) -> float:
    """The sparsity asked for after `step` optimizer steps: 0 before `begin_step`, rising as
    `target · (1 − (1 − progress)^power)` and reaching `target_sparsity` at `end_step`.

    Fast at first, slow near the target: the network loses its least useful weights
    while it still has many steps to recover from it.
    """
    if step <= begin_step:
        return 0.0
    progress = min(1.0, (step - begin_step) / max(end_step - begin_step, 1))
    return target_sparsity * (1.0 - (1.0 - progress) ** power)


def magnitude_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """A 0/1 mask of `weights`' shape zeroing its `round(sparsity · size)` smallest |weights|."""
    flat = np.abs(weights).ravel()
    count = round(sparsity * flat.size)
    mask = np.ones(flat.size, dtype=weights.dtype)
    # A stable sort: weights already zero (pruned before) come first and stay pruned.
    mask[np.argsort(flat, kind="stable")[:count]] = 0
    return mask.reshape(weights.shape)


class MagnitudePruning(keras.callbacks.Callback):
    """Prune the smallest-magnitude weights of every Conv2D/Dense kernel during `fit`.

    The sparsity follows `polynomial_sparsity` over the optimizer's step count: the
    masks are recomputed every `frequency` steps from `begin_step` on and once more at
    `end_step`, where they reach `target_sparsity` and stay fixed. After each train
    batch (and before the first) the masks are multiplied into the kernels, so pruned
    weights are zero in every forward pass and in the model `fit` leaves behind.
    Compile with `steps_per_execution=1`: Keras calls batch hooks once per execution.

    Raises:
        ValueError: target_sparsity outside [0, 1), end_step ≤ begin_step, begin_step < 0,
            power or frequency < 1.
    """

    def __init__(
        self,
        target_sparsity: float,
        begin_step: int,
        end_step: int,
        power: int = 3,
        frequency: int = 10,
    ) -> None:
        super().__init__()
        if not 0.0 <= target_sparsity < 1.0:
            raise ValueError(
                f"target_sparsity must be in [0, 1), got {target_sparsity}; "
                "set optimize.pruning.target_sparsity in params.yaml (0.5 prunes half the weights)"
            )
        if begin_step < 0 or end_step <= begin_step:
            raise ValueError(
                f"pruning needs 0 <= begin_step < end_step, got {begin_step} and {end_step}; "
                "check optimize.pruning.begin_fraction and end_fraction in params.yaml"
            )
        if power < 1 or frequency < 1:
            raise ValueError(f"power and frequency must be >= 1, got {power} and {frequency}")
        self.target_sparsity = target_sparsity
        self.begin_step = begin_step
        self.end_step = end_step
        self.power = power
        self.frequency = frequency
        self._kernels: list[keras.Variable] = []
        self._masks: list[np.ndarray] = []
        self._at_target = False  # masks reached target_sparsity and are fixed

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._kernels = prunable_kernels(self.model)
        if not self._kernels:
            raise ValueError(f"model {self.model.name!r} has no Conv2D or Dense kernel to prune")
        self._masks = [np.ones(kernel.shape, dtype=kernel.dtype) for kernel in self._kernels]
        self._at_target = False
        self._update(self._step())

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._update(self._step())

    def sparsity_at(self, step: int) -> float:
        """The schedule's sparsity after `step` optimizer steps."""
        return polynomial_sparsity(
            step, self.target_sparsity, self.begin_step, self.end_step, self.power
        )

    def _step(self) -> int:
        # The optimizer's count survives several fit calls and resumes; a batch index does not.
        return int(self.model.optimizer.iterations.numpy())

    def _update(self, step: int) -> None:
        """Recompute the masks when the schedule says so, then zero the pruned weights."""
        in_window = self.begin_step <= step < self.end_step
        if (in_window and (step - self.begin_step) % self.frequency == 0) or (
            step >= self.end_step and not self._at_target
        ):
            sparsity = self.sparsity_at(step)
            self._masks = [
                magnitude_mask(np.asarray(kernel) * mask, sparsity)
                for kernel, mask in zip(self._kernels, self._masks, strict=True)
            ]
            self._at_target = step >= self.end_step
        for kernel, mask in zip(self._kernels, self._masks, strict=True):
            kernel.assign(np.asarray(kernel) * mask)


def _count_batches(dataset: tf.data.Dataset) -> int:
    """Batches in one pass of the finite `dataset` (iterates it when tf.data cannot tell)."""
    known = int(dataset.cardinality())
    if known == tf.data.INFINITE_CARDINALITY:
        raise ValueError("pruning needs a finite train dataset (one epoch), not a repeated one")
    if known >= 0:
        return known
    return sum(1 for _ in dataset)


def _copy(model: keras.Model) -> keras.Model:
    """A new model with `model`'s architecture and weights, sharing no variable with it."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def prune(
    model: keras.Model,
    train: tf.data.Dataset,
    val: tf.data.Dataset | None,
    *,
    target_sparsity: float,
    epochs: int,
    begin_fraction: float,
    end_fraction: float,
    learning_rate: float,
    seed: int,
) -> keras.Model:
    """A copy of the trained `model` fine-tuned for `epochs` while pruned to `target_sparsity`.

    `train`/`val` are batched `(pixels, class id)` datasets, one epoch each. Pruning
    starts at `begin_fraction` of the fine-tuning steps and reaches the target at
    `end_fraction` (polynomial schedule, power 3); the remaining steps let the kept
    weights recover. The copy is compiled as the trainer compiles (Adam at
    `learning_rate`, sparse categorical cross-entropy, accuracy); `model` itself is
    not changed. `kernel_sparsity` of the result is `target_sparsity` to within a
    weight per kernel.

    Raises:
        ValueError: a fraction outside [0, 1], begin_fraction ≥ end_fraction, epochs < 1,
            target_sparsity outside [0, 1), or an empty or infinite `train`.
    """
    if epochs < 1:
        raise ValueError(f"pruning needs at least one fine-tuning epoch, got epochs={epochs}")
    if not 0.0 <= begin_fraction < end_fraction <= 1.0:
        raise ValueError(
            f"pruning needs 0 <= begin_fraction < end_fraction <= 1, got {begin_fraction} and "
            f"{end_fraction}; fix optimize.pruning in params.yaml"
        )
    steps = _count_batches(train) * epochs
    if steps == 0:
        raise ValueError(
            "pruning got an empty train dataset; check the processed data's train split"
        )
    # Both ends inside the run, at least one step apart, so the last step reaches the target.
    begin_step = min(math.floor(begin_fraction * steps), steps - 1)
    end_step = min(max(begin_step + 1, math.ceil(end_fraction * steps)), steps)
    callback = MagnitudePruning(target_sparsity, begin_step, end_step, power=3, frequency=1)
    keras.utils.set_random_seed(seed)
    pruned = _copy(model)
    pruned.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=1,  # the callback must see every step
    )
    pruned.fit(
        train, validation_data=val, epochs=epochs, callbacks=[callback], shuffle=False, verbose=2
    )
    return pruned
