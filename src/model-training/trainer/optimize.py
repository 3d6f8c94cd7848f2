"""The optimize stage: LiteRT variants of the candidate, measured, and the one to serve.

Each variant is quantized (trainer.quantize), run on the test split in LiteRT, and
compared with float32; the selection rule (params.yaml `optimize`) picks the fastest
variant that loses at most `max_accuracy_drop` of test accuracy and keeps the
registry's macro-F1 floor.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import keras
import numpy as np

from common import storage
from common.contracts import (
    KERAS_FILE,
    LABELS,
    OPTIMIZATION,
    SAVED_MODEL_DIR,
    TFLITE_FILE,
    Optimization,
    Preprocess,
    VariantScores,
    read_labels,
)
from common.params import OptimizeParams, PipelineParams
from trainer.data import make_dataset
from trainer.evaluate import classification_metrics, confusion_matrix
from trainer.pruning import kernel_sparsity
from trainer.quantize import Mode, convert, convert_keras, gzip_size, run_litert

BASELINE: Final = "float32"
# Measured for the gain of distillation, never served.
NOT_SELECTABLE = frozenset({"scratch_student_int8"})
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
    variants: list[Variant], test: TestSplit, labels: list[str], params: OptimizeParams
) -> list[VariantScores]:
    """Each variant's row, measured in LiteRT on `test`; `eligible` still unset (False).

    The first variant is the baseline the agreement is measured against.
    """
    rows, baseline = [], None
    for variant in variants:
        run = run_litert(
            variant.content,
            test.images,
            latency_runs=params.latency_runs,
            batch=params.throughput_batch,
        )
        baseline = run.predictions if baseline is None else baseline
        scores, _ = classification_metrics(
            confusion_matrix(test.labels, run.predictions, len(labels)), labels
        )
        rows.append(
            VariantScores(
                name=variant.name,  # type: ignore[arg-type]
                file=f"{variant.name}.tflite",
                accuracy=scores.accuracy,
                macro_f1=scores.macro_f1,
                agreement=float((run.predictions == baseline).mean()),
                bytes=len(variant.content),
                gzip_bytes=gzip_size(variant.content),
                latency_p50_ms=run.latency_p50_ms,
                latency_p95_ms=run.latency_p95_ms,
                throughput_per_s=run.throughput_per_s,
                parameters=variant.parameters,
                sparsity=variant.sparsity,
                input_dtype=run.input_dtype,  # type: ignore[arg-type]
                eligible=False,
            )
        )
    return rows


# Accuracies are shares of the same test items: a drop equal to the limit, computed in
# floating point, must not fail by a rounding error.
TOLERANCE = 1e-9


def select(
    rows: list[VariantScores], max_accuracy_drop: float, min_macro_f1: float
) -> Optimization:
    """The selection rule over measured rows (the float32 row among them).

    Eligible: selectable, test accuracy at least float32's minus `max_accuracy_drop`,
    and macro F1 at least the registry's `min_macro_f1`. The fastest eligible (p50)
    wins, a tie going to the smaller file; with none eligible, float32 is served.

    Raises:
        ValueError: no float32 row.
    """
    base = next((row for row in rows if row.name == BASELINE), None)
    if base is None:
        raise ValueError("the optimization table needs the float32 baseline row")
    floor = base.accuracy - max_accuracy_drop
    marked = [
        row.model_copy(
            update={
                "eligible": row.name not in NOT_SELECTABLE
                and row.accuracy >= floor - TOLERANCE
                and row.macro_f1 >= min_macro_f1 - TOLERANCE
            }
        )
        for row in rows
    ]
    eligible = [row for row in marked if row.eligible]
    if not eligible:
        reason = (
            f"no variant within {max_accuracy_drop:.3f} of float32's test accuracy "
            f"({base.accuracy:.4f}) with macro F1 ≥ {min_macro_f1:.2f}: serving float32"
        )
        return _report(BASELINE, reason, max_accuracy_drop, marked)
    best = min(eligible, key=lambda row: (row.latency_p50_ms, row.bytes))
    reason = (
        f"fastest within {max_accuracy_drop:.3f} of float32's test accuracy "
        f"({base.accuracy:.4f}): {best.name} {best.accuracy:.4f}, "
        f"p50 {best.latency_p50_ms:.3f} ms"
    )
    return _report(best.name, reason, max_accuracy_drop, marked)


def _report(selected: str, reason: str, drop: float, rows: list[VariantScores]) -> Optimization:
    # Every field set explicitly: unset fields are left out of the written document.
    return Optimization(
        baseline=BASELINE,
        selected=selected,  # type: ignore[arg-type]
        reason=reason,
        max_accuracy_drop=drop,
        variants=rows,
    )


def optimize(
    model_dir: Path,
    data: str,
    out: str,
    spec: Preprocess,
    pipeline: PipelineParams,
    extra_variants: Callable[[np.ndarray], list[Variant]] | None = None,
) -> Optimization:
    """Quantize, measure and select; writes `<variant>.tflite` and `optimization.json`
    into `out` (built beside it and swapped in whole). Returns the report.

    `extra_variants(representative)` adds variants made elsewhere (pruned, distilled).
    """
    params = pipeline.optimize
    labels = read_labels(storage.join(str(model_dir), LABELS))
    representative = load_split(data, "train", spec, params.representative_examples).images
    variants = candidate_variants(model_dir, representative)
    if extra_variants is not None:
        variants += extra_variants(representative)
    test = load_split(data, "test", spec)
    report = select(
        measure(variants, test, labels, params),
        params.max_accuracy_drop,
        pipeline.registry.min_macro_f1,
    )
    with storage.building(out) as staging:
        for variant in variants:
            storage.atomic_write_bytes(staging / f"{variant.name}.tflite", variant.content)
        shutil.copyfile(model_dir / LABELS, staging / LABELS)
        report.write(staging / OPTIMIZATION)
    return report
