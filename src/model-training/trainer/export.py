"""Export a trained model in every format the contract names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from common.contracts import LABELS, LINEAGE, PREPROCESS, Preprocess

KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"
HISTORY_FILE = "history.json"


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def export_model(
    model: keras.Model,
    folder: Path,
    *,
    labels: list[str],
    spec: Preprocess,
    lineage: dict[str, Any],
    history: dict[str, list[float]],
    with_tflite: bool = True,
) -> None:
    """Write `.keras`, SavedModel, float32 `.tflite` and the JSON sidecars into `folder`.

    `with_tflite=False` skips the conversion (non-chief workers export only to keep
    every worker's saving steps alike, and discard the result).
    """
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / KERAS_FILE)
    model.export(str(folder / SAVED_MODEL_DIR), format="tf_saved_model", verbose=False)
    if with_tflite:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(folder / SAVED_MODEL_DIR))
        (folder / TFLITE_FILE).write_bytes(converter.convert())
    _write_json(folder / LABELS, labels)
    _write_json(folder / PREPROCESS, spec.model_dump())
    _write_json(folder / LINEAGE, lineage)
    _write_json(folder / HISTORY_FILE, history)
