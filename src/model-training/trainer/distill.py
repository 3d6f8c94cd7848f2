"""Knowledge distillation: the trained candidate teaches a smaller small_cnn.

The student is `trainer.model.small_cnn` with narrower widths, so it takes the
candidate's raw 0–255 pixels and returns probabilities like every served model.
The same student trained from scratch for the same epochs (`train_from_scratch`)
measures what the teacher adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from trainer.model import small_cnn

# Probabilities are clipped here before their log: softmax outputs may round to 0.
_EPSILON = 1e-7


def student_model(
    input_shape: tuple[int, ...], num_classes: int, *, filters: Sequence[int], dense: int
) -> keras.Model:
    """small_cnn on `input_shape` (height, width, channels) raw pixels with `filters` conv
    widths and `dense` hidden units; outputs `num_classes` softmax probabilities.

    Raises:
        ValueError: `filters` is empty or a width is not positive.
    """
    return small_cnn(input_shape, num_classes, filters=filters, dense=dense, name="student")


def _logits(probabilities: Any) -> Any:
    # log(softmax(z)) = z − logsumexp(z): logits up to a per-row constant, which
    # softmax ignores, so it stands for the logits the probability models hide.
    return ops.log(ops.clip(probabilities, _EPSILON, 1.0))


def distillation_loss(
    labels: Any, student_probs: Any, teacher_probs: Any, *, temperature: float, alpha: float
) -> Any:
    """Per-example loss, shape (batch,): α·CE(labels, student) + (1−α)·T²·KL(teacher_T ‖ student_T).

    `labels` are class ids (batch,); both probability tensors are (batch, classes);
    the `_T` distributions are the softmax of the logits divided by `temperature`.
    T² keeps the soft term's gradients on the hard term's scale whatever T is.
    """
    hard = keras.losses.sparse_categorical_crossentropy(labels, student_probs)
    soft_teacher = ops.softmax(_logits(teacher_probs) / temperature, axis=-1)
    log_student = ops.log_softmax(_logits(student_probs) / temperature, axis=-1)
    log_teacher = ops.log(ops.clip(soft_teacher, _EPSILON, 1.0))
    kl = ops.sum(soft_teacher * (log_teacher - log_student), axis=-1)
    return alpha * hard + (1.0 - alpha) * temperature**2 * kl


class _Distiller(keras.Model):
    """Fits `student` on the distillation loss; the frozen `teacher` only predicts."""

    def __init__(
        self, student: keras.Model, teacher: keras.Model, temperature: float, alpha: float
    ) -> None:
        super().__init__(name="distiller")
        self.student = student
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.student(inputs, training=training)

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        teacher_probs = ops.stop_gradient(self.teacher(x, training=False))
        losses = distillation_loss(
            y, y_pred, teacher_probs, temperature=self.temperature, alpha=self.alpha
        )
        return ops.mean(losses)


def _frozen_copy(model: keras.Model) -> keras.Model:
    # A copy, so freezing it leaves the caller's teacher trainable and untouched.
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.trainable = False
    return copy


def _check(epochs: int, temperature: float = 1.0, alpha: float = 0.0) -> None:
    if epochs < 1:
        raise ValueError(f"the student needs at least one epoch, got epochs={epochs}")
    if temperature <= 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature}; fix optimize.distill.temperature"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}; fix optimize.distill.alpha")


def distill(
    teacher: keras.Model,
    train: tf.data.Dataset,
    val: tf.data.Dataset | None,
    *,
    filters: Sequence[int],
    dense: int,
    temperature: float,
    alpha: float,
    epochs: int,
    learning_rate: float,
    seed: int,
) -> keras.Model:
    """A `student_model` trained for `epochs` on `teacher`'s soft targets and the labels.

    `teacher` outputs probabilities for the pixels `train`/`val` hold (batched
    `(pixels, class id)` datasets, one epoch each); it is not changed. Adam at
    `learning_rate`, seeded with `seed` like the trainer. Returns the student alone,
    outputting probabilities.

    Raises:
        ValueError: epochs < 1, temperature ≤ 0, alpha outside [0, 1], or bad widths.
    """
    _check(epochs, temperature, alpha)
    keras.utils.set_random_seed(seed)
    student = student_model(
        tuple(teacher.input_shape[1:]), int(teacher.output_shape[-1]), filters=filters, dense=dense
    )
    distiller = _Distiller(student, _frozen_copy(teacher), temperature, alpha)
    distiller.compile(optimizer=keras.optimizers.Adam(learning_rate), metrics=["accuracy"])
    distiller.fit(train, validation_data=val, epochs=epochs, shuffle=False, verbose=2)
    return student


def train_from_scratch(
    train: tf.data.Dataset,
    val: tf.data.Dataset | None,
    *,
    filters: Sequence[int],
    dense: int,
    epochs: int,
    learning_rate: float,
    seed: int,
    input_shape: tuple[int, ...],
    num_classes: int,
) -> keras.Model:
    """The same student as `distill` builds, trained on the labels alone for `epochs`.

    Compiled as the trainer compiles (Adam at `learning_rate`, sparse categorical
    cross-entropy) and seeded with `seed`, so its accuracy against the distilled
    student's is the teacher's gain.

    Raises:
        ValueError: epochs < 1 or bad widths.
    """
    _check(epochs)
    keras.utils.set_random_seed(seed)
    student = student_model(input_shape, num_classes, filters=filters, dense=dense)
    student.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    student.fit(train, validation_data=val, epochs=epochs, shuffle=False, verbose=2)
    return student
