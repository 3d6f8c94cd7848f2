"""LiteRT variants of the candidate, measured, and the rule that picks the one to serve.

The optimize stage quantizes each variant (trainer.quantize), runs it on the test split
in LiteRT and compares it with float32: accuracy, macro F1, agreement and size, which
the same code and data always reproduce, so the stage's outputs are DVC-reproducible.
A variant is eligible when it loses at most `optimize.max_accuracy_drop` of test
accuracy and keeps the registry's macro-F1 floor.

Speed depends on the machine and moves from run to run, so register times every
variant when it publishes (`time_variants`) and serves the fastest eligible one
(`select`); the version records the timings and the choice.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from common import storage
from common.contracts import (
    KERAS_FILE,
    LABELS,
    OPTIMIZATION,
    SAVED_MODEL_DIR,
    TFLITE_FILE,
    TIMING_IMAGES,
    Optimization,
    Preprocess,
    VariantScores,
    read_labels,
)
from common.params import PipelineParams
from trainer.data import make_dataset
from trainer.evaluate import classification_metrics, confusion_matrix
from trainer.litert import predict_litert
from trainer.pruning import kernel_sparsity
from trainer.quantize import Mode, convert, convert_keras, gzip_size
from trainer.selection import mark_eligible

# Quantizations of the candidate itself, in table order.
QUANTIZED: tuple[tuple[str, Mode], ...] = (
    ("float32", "float32"),
    ("float16", "float16"),
    ("dynamic", "dynamic"),
    ("int8", "int8"),
)


@dataclass(frozen=True)
class Variant:
    """A LiteRT flatbuffer to measure, with the Keras model it came from."""

    name: str
    content: bytes
    parameters: int
    sparsity: float


@dataclass(frozen=True)
class TestSplit:
    images: np.ndarray  # float32 [N, H, W, C], 0–255
    labels: np.ndarray  # int64 [N]


def load_split(data: str, split: str, spec: Preprocess, limit: int | None = None) -> TestSplit:
    """The first `limit` (all when None) images and labels of `split`, in record order."""
    dataset = make_dataset(data, split, spec=spec, batch_size=256)
    images, labels, seen = [], [], 0
    for x, y in dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
        seen += len(images[-1])
        if limit is not None and seen >= limit:
            break
    return TestSplit(
        np.concatenate(images)[:limit].astype(np.float32),
        np.concatenate(labels)[:limit].astype(np.int64),
    )


def candidate_variants(model_dir: Path, representative: np.ndarray) -> list[Variant]:
    """float32 (the candidate's own `.tflite`), float16, dynamic range and int8."""
    model = keras.models.load_model(model_dir / KERAS_FILE)
    variants = []
    for name, mode in QUANTIZED:
        content = (
            (model_dir / TFLITE_FILE).read_bytes()
            if mode == "float32"
            else convert(model_dir / SAVED_MODEL_DIR, mode, representative)
        )
        variants.append(Variant(name, content, model.count_params(), kernel_sparsity(model)))
    return variants


def keras_variant(
    name: str, model: keras.Model, representative: np.ndarray, sparsity: float
) -> Variant:
    """A pruned or distilled Keras model as a full-integer int8 variant."""
    content = convert_keras(model, "int8", representative)
    return Variant(name, content, model.count_params(), sparsity)


def measure(
    variants: list[Variant], test: TestSplit, labels: list[str], batch: int
) -> list[VariantScores]:
    """Each variant's row, measured in LiteRT on `test` (no timings; `eligible` False).

    The first variant is the baseline the agreement is measured against.
    """
    rows, baseline = [], None
    for variant in variants:
        predicted = predict_litert(variant.content, test.images, batch=batch)
        baseline = predicted.classes if baseline is None else baseline
        scores, _ = classification_metrics(
            confusion_matrix(test.labels, predicted.classes, len(labels)), labels
        )
        rows.append(
            VariantScores(
                name=variant.name,  # type: ignore[arg-type]
                file=f"{variant.name}.tflite",
                accuracy=scores.accuracy,
                macro_f1=scores.macro_f1,
                agreement=float((predicted.classes == baseline).mean()),
                bytes=len(variant.content),
                gzip_bytes=gzip_size(variant.content),
                parameters=variant.parameters,
                sparsity=variant.sparsity,
                input_dtype=predicted.input_dtype,  # type: ignore[arg-type]
                eligible=False,
            )
        )
    return rows


def timing_sample(test: TestSplit, count: int) -> bytes:
    """`TIMING_IMAGES`: the first `count` test images as a uint8 `.npy` `[count, H, W, C]`
    (rounded: timing does not depend on the pixels' fractions, and uint8 is a quarter
    of the bytes)."""
    buffer = io.BytesIO()
    np.save(buffer, np.clip(np.round(test.images[:count]), 0, 255).astype(np.uint8))
    return buffer.getvalue()


def optimize(
    model_dir: Path,
    data: str,
    out: str,
    spec: Preprocess,
    pipeline: PipelineParams,
    extra_variants: Callable[[np.ndarray], list[Variant]] | None = None,
) -> Optimization:
    """Quantize, measure and mark the eligible variants; writes `<variant>.tflite`,
    `labels.txt` and `optimization.json` into `out` (built beside it and swapped in
    whole). Returns the report (untimed: register times and selects).

    `extra_variants(representative)` adds variants made elsewhere (pruned, distilled).
    """
    params = pipeline.optimize
    labels = read_labels(storage.join(str(model_dir), LABELS))
    representative = load_split(data, "train", spec, params.representative_examples).images
    variants = candidate_variants(model_dir, representative)
    if extra_variants is not None:
        variants += extra_variants(representative)
    test = load_split(data, "test", spec)
    report = mark_eligible(
        measure(variants, test, labels, params.throughput_batch),
        params.max_accuracy_drop,
        pipeline.registry.min_macro_f1,
    )
    with storage.building(out) as staging:
        for variant in variants:
            storage.atomic_write_bytes(staging / f"{variant.name}.tflite", variant.content)
        shutil.copyfile(model_dir / LABELS, staging / LABELS)
        storage.atomic_write_bytes(
            staging / TIMING_IMAGES, timing_sample(test, params.throughput_batch)
        )
        report.write(staging / OPTIMIZATION)
    return report
