"""Post-training quantization of Keras models and SavedModels to LiteRT flatbuffers.

trainer.litert runs the results in the runtime that serves them.
"""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from trainer.quiet import filtered_native_stderr

Mode = Literal["float32", "float16", "dynamic", "int8"]


def convert(saved_model: Path, mode: Mode, representative: np.ndarray | None = None) -> bytes:
    """The SavedModel's `serve` signature as a LiteRT flatbuffer quantized by `mode`.

    float32: no quantization; float16: weights stored as float16; dynamic: int8 weights,
    float activations; int8: full integer, uint8 pixels in and uint8 scores out, with
    activation ranges calibrated on `representative` (float images `[N, H, W, C]`, 0–255).

    Raises:
        ValueError: int8 without representative images.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        if representative is None or not len(representative):
            raise ValueError("full-integer quantization needs representative images")
        images = representative.astype(np.float32)

        def calibration() -> Iterator[list[np.ndarray]]:
            for image in images:
                yield [image[np.newaxis]]

        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # uint8 in: the raw 0–255 pixels quantize to themselves (scale 1, zero point 0)
        # when the calibration images span the full range, as the digits do.
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with filtered_native_stderr():
        return bytes(converter.convert())


def keras_to_saved_model(model: keras.Model, folder: Path) -> Path:
    """Export `model` as the trainer exports the candidate (inference-mode `serve`)."""
    from trainer.export import _export_saved_model

    path = folder / "saved_model"
    _export_saved_model(model, path)
    return path


def convert_keras(model: keras.Model, mode: Mode, representative: np.ndarray | None) -> bytes:
    """`convert` for an in-memory Keras model (pruned or student), via a temporary export."""
    with tempfile.TemporaryDirectory(prefix="optimize-") as tmp:
        return convert(keras_to_saved_model(model, Path(tmp)), mode, representative)


def gzip_size(content: bytes) -> int:
    """Bytes after gzip at level 9 with no timestamp: what a download would weigh."""
    return len(gzip.compress(content, compresslevel=9, mtime=0))
