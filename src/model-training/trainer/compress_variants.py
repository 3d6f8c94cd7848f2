"""The pruned and distilled variants of the optimize stage, quantized to int8 like the rest.

Pruning fine-tunes a copy of the candidate; distillation trains a small student from
the candidate's soft targets, and the same student is trained from scratch for the
same epochs, so the report shows what distillation gains rather than assuming it.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from common.contracts import KERAS_FILE
from common.params import PipelineParams
from trainer.distill import distill, train_from_scratch
from trainer.optimize import Variant, keras_variant
from trainer.prepare import read_inputs, set_up
from trainer.pruning import kernel_sparsity, prune


def compressed_variants(
    model_dir: Path, data: str, pipeline: PipelineParams, representative: np.ndarray
) -> list[Variant]:
    """pruned_int8, student_int8 and scratch_student_int8, trained on `data`'s train split
    (val for monitoring) with the trainer's datasets, seed and learning rate."""
    cfg = pipeline.train
    setup = set_up("default", cfg.seed, cfg.batch_size)
    inputs = read_inputs(data, cfg, setup)
    teacher = keras.models.load_model(model_dir / KERAS_FILE)
    pruning, student = pipeline.optimize.pruning, pipeline.optimize.distill
    pruned = prune(
        teacher,
        inputs.train,
        inputs.val,
        target_sparsity=pruning.target_sparsity,
        epochs=pruning.epochs,
        begin_fraction=pruning.begin_fraction,
        end_fraction=pruning.end_fraction,
        learning_rate=cfg.learning_rate,
        seed=cfg.seed,
    )
    epochs = student.epochs or cfg.epochs
    distilled = distill(
        teacher,
        inputs.train,
        inputs.val,
        filters=student.filters,
        dense=student.dense,
        temperature=student.temperature,
        alpha=student.alpha,
        epochs=epochs,
        learning_rate=cfg.learning_rate,
        seed=cfg.seed,
    )
    scratch = train_from_scratch(
        inputs.train,
        inputs.val,
        filters=student.filters,
        dense=student.dense,
        epochs=epochs,
        learning_rate=cfg.learning_rate,
        seed=cfg.seed,
        input_shape=inputs.spec.shape,
        num_classes=len(inputs.labels),
    )
    return [
        keras_variant("pruned_int8", pruned, representative, kernel_sparsity(pruned)),
        keras_variant("student_int8", distilled, representative, kernel_sparsity(distilled)),
        keras_variant("scratch_student_int8", scratch, representative, kernel_sparsity(scratch)),
    ]
