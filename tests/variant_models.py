"""A tiny candidate and its optimize-stage folder, with a real full-integer LiteRT variant.

Shared by the register and API tests of issue 14: an 8×8 grayscale two-class model
("dark", "bright") whose weights are set, not trained, so clear inputs have a known
answer. The int8 variant takes uint8 pixels, as the optimize stage's int8 does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LABELS = ["dark", "bright"]
SIZE = 8


def _keras_model():  # type: ignore[no-untyped-def]
    """Raw 0–255 pixels in (Rescaling inside, as the project's models), softmax out:
    bright images score `bright`, dark ones `dark`, by the mean pixel."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Flatten()(x)
    dense = keras.layers.Dense(2, activation="softmax")
    outputs = dense(x)
    model = keras.Model(inputs, outputs)
    pixels = SIZE * SIZE
    slope = np.float32(0.5)
    kernel = np.stack([-slope * np.ones(pixels), slope * np.ones(pixels)], axis=1)
    bias = np.array([slope * pixels / 2, -slope * pixels / 2])
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


def export(root: Path) -> Path:
    """The tiny model as a SavedModel in `root/saved`, what the converter reads."""
    _keras_model().export(str(root / "saved"), format="tf_saved_model", verbose=False)
    return root / "saved"


def convert(saved_model: Path, kind: str) -> bytes:
    """The `.tflite` of one kind of variant, as the optimize stage makes them.

    "float32"; "float16" (float16 weights, float32 input and output); "dynamic"
    (int8 weights, float32 I/O); "uint8" or "int8": full integer with that input and
    output type, calibrated on random 0–255 images.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if kind != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if kind in ("uint8", "int8"):
        rng = np.random.default_rng(0)

        def representative():  # type: ignore[no-untyped-def]
            for _ in range(32):
                yield [rng.integers(0, 256, (1, SIZE, SIZE, 1)).astype(np.float32)]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, kind)
        converter.inference_output_type = getattr(tf, kind)
    return bytes(converter.convert())


def row(name: str, file: str, size: int, input_dtype: str, **scores: object) -> dict[str, object]:
    """One variant row of the optimize stage's optimization.json (no timings: register
    adds them)."""
    return {
        "name": name,
        "file": file,
        "accuracy": 1.0,
        "macro_f1": 1.0,
        "agreement": 1.0,
        "bytes": size,
        "gzip_bytes": size,
        "parameters": 130,
        "sparsity": 0.0,
        "input_dtype": input_dtype,
        "eligible": True,
        **scores,
    }


def make_candidate(
    root: Path, input_dtype: str = "uint8", eligible: tuple[str, ...] = ("int8",)
) -> tuple[Path, Path, Path]:
    """`root/candidate` (float32 model.tflite and sidecars), `root/metrics.json`, and
    `root/optimized` as the optimize stage leaves it: float32.tflite, int8.tflite with
    `input_dtype` input and output, the test images register times them on, and
    optimization.json with the `eligible` variants marked.

    Register serves the fastest eligible variant by its own timings; with one eligible
    variant (int8 by default) what it serves does not depend on them.
    """
    saved = export(root)
    float32 = convert(saved, "float32")
    int8 = convert(saved, input_dtype)

    candidate = root / "candidate"
    candidate.mkdir(parents=True)
    (candidate / "labels.json").write_text(json.dumps(LABELS))
    spec = {"image_size": SIZE, "color_mode": "grayscale", "resize": "stretch"}
    (candidate / "preprocess.json").write_text(json.dumps(spec))
    (candidate / "lineage.json").write_text(json.dumps({"trained_at": "t", "params": {}}))
    (candidate / "model.tflite").write_bytes(float32)

    metrics = root / "metrics.json"
    metrics.write_text(json.dumps({"test": {"accuracy": 1.0, "macro_f1": 1.0, "examples": 20}}))

    optimized = root / "optimized"
    optimized.mkdir()
    (optimized / "float32.tflite").write_bytes(float32)
    (optimized / "int8.tflite").write_bytes(int8)
    (optimized / "labels.json").write_text(json.dumps(LABELS))
    images = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 1), dtype=np.uint8)
    np.save(optimized / "timing_images.npy", images)
    report = {
        "baseline": "float32",
        "max_accuracy_drop": 0.01,
        "variants": [
            row(
                "float32", "float32.tflite", len(float32), "float32", eligible="float32" in eligible
            ),
            row("int8", "int8.tflite", len(int8), input_dtype, eligible="int8" in eligible),
        ],
    }
    (optimized / "optimization.json").write_text(json.dumps(report))
    return candidate, metrics, optimized
