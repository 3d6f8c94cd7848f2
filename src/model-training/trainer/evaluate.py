"""Evaluate the candidate on the test split: Keras model and exported `.tflite` alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from common import storage
from common.contracts import (
    CURVES,
    KERAS_FILE,
    LABELS,
    TFLITE_FILE,
    ClassScores,
    Evaluation,
    Metrics,
    Preprocess,
    SplitMetrics,
    read_labels,
)
from trainer.data import make_dataset
from trainer.quiet import filtered_native_stderr


@dataclass(frozen=True)
class EvaluationResult:
    """What `evaluate` measured: `metrics.json` (DVC metrics) and `evaluation.json`."""

    metrics: Metrics
    details: Evaluation


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (true, pred), 1)
    return matrix


def classification_metrics(
    matrix: np.ndarray, labels: list[str]
) -> tuple[SplitMetrics, Evaluation]:
    """Scores from a confusion matrix (`matrix[true][predicted]`, `labels` order).

    Returns the split's accuracy and macro F1 (over the classes with test examples;
    the other `SplitMetrics` fields left unset for the caller), and the `Evaluation`:
    per-class precision, recall and support, and the matrix itself.
    """
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    actual = matrix.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = actual > 0
    scores = SplitMetrics(
        accuracy=float(tp.sum() / max(matrix.sum(), 1)),
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
    )
    details = Evaluation(
        labels=labels,
        per_class={
            label: ClassScores(precision=float(p), recall=float(r), support=int(n))
            for label, p, r, n in zip(labels, precision, recall, actual, strict=True)
        },
        confusion_matrix=matrix.tolist(),
    )
    return scores, details


def tflite_predict(tflite_path: Path, images: np.ndarray) -> np.ndarray:
    """Class indices the exported `.tflite` predicts, one image at a time as served."""
    from ai_edge_litert.interpreter import Interpreter

    with filtered_native_stderr():  # LiteRT's "Created ... XNNPACK delegate" notice
        interpreter = Interpreter(model_path=str(tflite_path))
        interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    predictions = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[np.newaxis].astype(inp["dtype"]))
        interpreter.invoke()
        predictions.append(int(np.argmax(interpreter.get_tensor(out["index"])[0])))
    return np.array(predictions, dtype=np.int64)


def evaluate(
    model_dir: Path,
    data: str,
    spec: Preprocess,
    batch_size: int = 256,
    plots: str | None = None,
) -> EvaluationResult:
    """Metrics of the candidate in `model_dir` on the test split of `data`.

    With `plots`, also writes the confusion-matrix and misclassified-examples PNGs
    and the training curves (DVC plots) into that folder.
    """
    labels = read_labels(storage.join(str(model_dir), LABELS))
    model = keras.models.load_model(model_dir / KERAS_FILE)
    dataset = make_dataset(data, "test", spec=spec, batch_size=batch_size, with_ids=True)
    batches = [(x.numpy(), y.numpy(), i.numpy()) for x, y, i in dataset]  # one pass
    images = np.concatenate([x for x, _, _ in batches])
    true = np.concatenate([y for _, y, _ in batches])
    # The record's name from the collector on: reports point at the raw file by it.
    ids = [sha.decode("ascii") for _, _, batch in batches for sha in batch]
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    loss = float(keras.losses.sparse_categorical_crossentropy(true, probabilities).numpy().mean())
    matrix = confusion_matrix(true, probabilities.argmax(axis=1), len(labels))
    scores, details = classification_metrics(matrix, labels)
    tflite_pred = tflite_predict(model_dir / TFLITE_FILE, images)
    if plots is not None:
        from trainer.plots import write_plots

        history_path = model_dir / CURVES
        write_plots(
            plots,
            matrix=matrix,
            labels=labels,
            images=images,
            true=true,
            probabilities=probabilities,
            ids=ids,
            history=storage.read_json(history_path) if history_path.is_file() else {},
        )
    test = SplitMetrics(
        accuracy=scores.accuracy,
        macro_f1=scores.macro_f1,
        loss=loss,
        tflite_accuracy=float((tflite_pred == true).mean()),
        examples=len(true),
    )
    return EvaluationResult(metrics=Metrics(test=test), details=details)
