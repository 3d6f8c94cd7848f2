"""Distillation: the student's size, the loss, and that both students learn, reproducibly."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from common.contracts import Preprocess
from trainer.distill import distill, distillation_loss, student_model, train_from_scratch
from trainer.model import build_small_cnn
from trainer.pruning import prune

SHAPE = (16, 16, 1)
# The contract's default student (params.yaml optimize.distill).
FILTERS, DENSE = (8, 16), 32


def test_default_small_cnn_is_unchanged_by_the_widths() -> None:
    # 320 + 18 496 (convs) + 131 200 (dense 1024→128) + 1 290 (head): the candidate as before.
    model = build_small_cnn(Preprocess(image_size=16, color_mode="grayscale"), 10)
    assert model.count_params() == 151_306
    assert [layer.name for layer in model.layers][-1] == "probabilities"


def test_student_is_at_most_a_quarter_of_the_candidate() -> None:
    candidate = build_small_cnn(Preprocess(image_size=16, color_mode="grayscale"), 10)
    student = student_model(SHAPE, 10, filters=FILTERS, dense=DENSE)
    assert student.count_params() <= 0.25 * candidate.count_params()
    assert student.input_shape == candidate.input_shape
    assert student.output_shape == candidate.output_shape
    # Raw pixels in, probabilities out, like the candidate.
    pixels = np.full((2, *SHAPE), 255.0, dtype=np.float32)
    assert np.allclose(np.sum(student.predict_on_batch(pixels), axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("filters", "dense"), [((), 32), ((8, 0), 32), ((8, 16), 0)])
def test_student_rejects_bad_widths(filters: tuple[int, ...], dense: int) -> None:
    with pytest.raises(ValueError, match="widths"):
        student_model(SHAPE, 10, filters=filters, dense=dense)


def test_loss_is_cross_entropy_at_alpha_one_and_kl_vanishes_on_agreement() -> None:
    labels = np.array([0, 2])
    student = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=np.float32)
    teacher = np.array([[0.9, 0.05, 0.05], [0.2, 0.2, 0.6]], dtype=np.float32)
    hard = -np.log(student[[0, 1], labels])
    at_one = distillation_loss(labels, student, teacher, temperature=4.0, alpha=1.0)
    assert np.allclose(np.asarray(at_one), hard, atol=1e-5)
    same = distillation_loss(labels, student, student, temperature=4.0, alpha=0.0)
    assert np.allclose(np.asarray(same), 0.0, atol=1e-5)
    # KL at temperature T on the logits, scaled by T².
    t = 4.0
    soft = lambda p: np.exp(np.log(p) / t) / np.sum(np.exp(np.log(p) / t), -1, keepdims=True)  # noqa: E731
    kl = np.sum(soft(teacher) * (np.log(soft(teacher)) - np.log(soft(student))), -1)
    at_zero = distillation_loss(labels, student, teacher, temperature=t, alpha=0.0)
    assert np.allclose(np.asarray(at_zero), t**2 * kl, atol=1e-4)


def test_distilled_and_scratch_students_learn_and_leave_the_teacher(
    teacher, digit_splits, model_accuracy
) -> None:
    train, test = digit_splits
    before = [w.copy() for w in teacher.get_weights()]
    trainable = teacher.trainable
    distilled = distill(
        teacher,
        train,
        test,
        filters=FILTERS,
        dense=DENSE,
        temperature=4.0,
        alpha=0.5,
        epochs=4,
        learning_rate=3e-3,
        seed=0,
    )
    scratch = train_from_scratch(
        train,
        test,
        filters=FILTERS,
        dense=DENSE,
        epochs=4,
        learning_rate=3e-3,
        seed=0,
        input_shape=SHAPE,
        num_classes=10,
    )
    assert all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights(), strict=True))
    assert teacher.trainable == trainable
    assert distilled.name == scratch.name == "student"
    assert distilled.count_params() == scratch.count_params()
    # Chance is 0.1 on ten classes.
    assert model_accuracy(distilled, test) > 0.7
    assert model_accuracy(scratch, test) > 0.7


def _fixed_order(digit_splits):
    # The train split reshuffles on every pass; the same seed must give the same weights
    # on the same batches, so these runs fit on the unshuffled test split.
    _, test = digit_splits
    return test


def _scratch(digit_splits, seed: int) -> list[np.ndarray]:
    train = _fixed_order(digit_splits)
    model = train_from_scratch(
        train,
        None,
        filters=FILTERS,
        dense=DENSE,
        epochs=1,
        learning_rate=3e-3,
        seed=seed,
        input_shape=SHAPE,
        num_classes=10,
    )
    return model.get_weights()


def _distilled(teacher, digit_splits, seed: int) -> list[np.ndarray]:
    train = _fixed_order(digit_splits)
    model = distill(
        teacher,
        train,
        None,
        filters=FILTERS,
        dense=DENSE,
        temperature=4.0,
        alpha=0.5,
        epochs=1,
        learning_rate=3e-3,
        seed=seed,
    )
    return model.get_weights()


def test_same_seed_gives_the_same_students(teacher, digit_splits) -> None:
    first, again, other = (_scratch(digit_splits, s) for s in (5, 5, 6))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    one, two = (_distilled(teacher, digit_splits, 5) for _ in range(2))
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "at least one epoch"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
    ],
)
def test_distill_rejects_bad_params(teacher, digit_splits, changes, message) -> None:
    train, _ = digit_splits
    args = {
        "filters": FILTERS,
        "dense": DENSE,
        "temperature": 4.0,
        "alpha": 0.5,
        "epochs": 1,
        "learning_rate": 1e-3,
        "seed": 0,
    } | changes
    with pytest.raises(ValueError, match=message):
        distill(teacher, train, None, **args)


def test_prune_and_students_accept_the_trainers_uint8_pixels(teacher, digit_splits) -> None:
    # trainer.prepare feeds uint8 images; every fine-tuned model must take them too.
    train, _ = digit_splits
    as_uint8 = train.map(lambda x, y: (keras.ops.cast(x, "uint8"), y)).take(3)
    common = {"epochs": 1, "learning_rate": 1e-3, "seed": 0}
    widths = {"filters": FILTERS, "dense": DENSE}
    pruned = prune(
        teacher,
        as_uint8,
        None,
        target_sparsity=0.5,
        begin_fraction=0.0,
        end_fraction=1.0,
        **common,
    )
    student = distill(teacher, as_uint8, None, temperature=4.0, alpha=0.5, **widths, **common)
    scratch = train_from_scratch(
        as_uint8, None, input_shape=SHAPE, num_classes=10, **widths, **common
    )
    pixels = np.zeros((1, *SHAPE), dtype=np.uint8)
    for model in (pruned, student, scratch):
        assert model.predict_on_batch(pixels).shape == (1, 10)
