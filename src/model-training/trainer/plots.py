"""Evaluation plots: confusion matrix, misclassified examples, training curves.

The CSV files are DVC plots (`dvc plots show` renders them, see dvc.yaml); the
PNGs are DVC image plots and are easy to open on their own.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from common import storage

CONFUSION_PNG = "confusion_matrix.png"
MISCLASSIFIED_PNG = "misclassified.png"
CURVES_CSV = "training_curves.csv"
PREDICTIONS_CSV = "predictions.csv"


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def confusion_png(matrix: np.ndarray, labels: list[str]) -> bytes:
    """A confusion matrix heat map with the counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")  # no display in containers and CI
    from matplotlib import pyplot as plt

    size = max(4.0, 0.5 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 12 else 0)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("Confusion matrix (test split)")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        if count:
            axes.text(
                col,
                row,
                str(count),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if count > threshold else "black",
            )
    data = _png(figure)
    plt.close(figure)
    return data


# Enough of the sha256 to find the record in manifest.jsonl (grep) and the raw file
# (images/<label>/<sha256>.<ext>); the whole hash would not fit above a thumbnail.
ID_CHARS = 12


def misclassified_titles(
    true: np.ndarray,
    probabilities: np.ndarray,
    labels: list[str],
    ids: list[str],
    limit: int = 25,
) -> list[tuple[int, str]]:
    """The most confidently wrong examples, most confident first: `(index, title)`.

    `true` is `[N]` class indices, `probabilities` `[N, classes]`, `ids` the records'
    sha256; a title reads `true → predicted (p)` over the record's short sha256.
    """
    pred = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(pred != true)
    wrong = wrong[np.argsort(-probabilities[wrong, pred[wrong]], kind="stable")][:limit]
    return [
        (
            int(index),
            f"{labels[true[index]]} → {labels[pred[index]]} "
            f"({probabilities[index, pred[index]]:.2f})\n{ids[index][:ID_CHARS]}",
        )
        for index in wrong
    ]


def misclassified_png(
    images: np.ndarray,
    true: np.ndarray,
    probabilities: np.ndarray,
    labels: list[str],
    ids: list[str],
    limit: int = 25,
) -> bytes:
    """A grid of the most confidently wrong test images, each titled by `misclassified_titles`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    wrong = misclassified_titles(true, probabilities, labels, ids, limit)
    columns = 5
    rows = max(1, -(-len(wrong) // columns))
    figure, grid = plt.subplots(rows, columns, figsize=(2 * columns, 2.4 * rows), squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for axes, (index, title) in zip(grid.flat, wrong, strict=False):
        image = images[index].astype(np.uint8)
        axes.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        axes.set_title(title, fontsize=8)
    if not len(wrong):
        grid[0, 0].set_title("no misclassified examples", fontsize=9)
    figure.suptitle("Misclassified test examples (true → predicted)")
    data = _png(figure)
    plt.close(figure)
    return data


def curves_csv(history: dict[str, list[float]]) -> str:
    """Per-epoch metrics as CSV: `epoch,<metric>,…`, one row per epoch."""
    keys = sorted(history)
    epochs = max((len(v) for v in history.values()), default=0)
    lines = [",".join(["epoch", *keys])]
    for epoch in range(epochs):
        values = [history[k][epoch] if epoch < len(history[k]) else "" for k in keys]
        lines.append(",".join([str(epoch + 1), *(f"{v:.6g}" if v != "" else "" for v in values)]))
    return "\n".join(lines) + "\n"


def predictions_csv(true: np.ndarray, pred: np.ndarray, labels: list[str], ids: list[str]) -> str:
    """`actual,predicted,sha256` rows: DVC's confusion-matrix template reads the labels;
    the sha256 names the record in the raw store's `manifest.jsonl`."""
    rows = [f"{labels[t]},{labels[p]},{sha}" for t, p, sha in zip(true, pred, ids, strict=True)]
    return "actual,predicted,sha256\n" + "".join(row + "\n" for row in rows)


def write_plots(
    folder: str,
    *,
    matrix: np.ndarray,
    labels: list[str],
    images: np.ndarray,
    true: np.ndarray,
    probabilities: np.ndarray,
    ids: list[str],
    history: dict[str, list[float]],
) -> None:
    """Write every evaluation plot into `folder` (local or gs://)."""
    storage.write_bytes(storage.join(folder, CONFUSION_PNG), confusion_png(matrix, labels))
    storage.write_bytes(
        storage.join(folder, MISCLASSIFIED_PNG),
        misclassified_png(images, true, probabilities, labels, ids),
    )
    storage.write_text(storage.join(folder, CURVES_CSV), curves_csv(history))
    storage.write_text(
        storage.join(folder, PREDICTIONS_CSV),
        predictions_csv(true, probabilities.argmax(axis=1), labels, ids),
    )
