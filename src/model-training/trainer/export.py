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


def _export_saved_model(model: keras.Model, path: Path) -> None:
    """A SavedModel whose `serve` endpoint runs `model` in inference mode.

    `model.export` traces `model.__call__` without `training=False`, and then a
    nested backbone's stochastic depth (EfficientNet's `block*_drop` Dropout layers)
    keeps its random ops, which the TFLite converter refuses (ERROR_NEEDS_FLEX_OPS).
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    [inputs] = model.inputs
    signature = tf.TensorSpec((None, *inputs.shape[1:]), inputs.dtype, name="pixels")
    archive.add_endpoint(
        "serve", lambda pixels: model(pixels, training=False), input_signature=[signature]
    )
    archive.write_out(str(path), verbose=False)


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
    _export_saved_model(model, folder / SAVED_MODEL_DIR)
    if with_tflite:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(folder / SAVED_MODEL_DIR))
        (folder / TFLITE_FILE).write_bytes(converter.convert())
    _write_json(folder / LABELS, labels)
    _write_json(folder / PREPROCESS, spec.model_dump())
    _write_json(folder / LINEAGE, lineage)
    _write_json(folder / HISTORY_FILE, history)
