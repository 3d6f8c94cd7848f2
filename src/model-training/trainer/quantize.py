"""Post-training quantization to LiteRT and measurement in the LiteRT interpreter.

Every variant is judged in the runtime that would serve it (ai_edge_litert), not in
Keras: quantization error, operator fallbacks and the interpreter's own overhead all
show up only there.
"""

from __future__ import annotations

import gzip
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from trainer.quiet import filtered_native_stderr

Mode = Literal["float32", "float16", "dynamic", "int8"]
LATENCY_WARMUP = 10  # invocations before timing: first calls allocate and pack weights


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


@dataclass(frozen=True)
class LiteRTRun:
    """A variant run on the test split: predicted classes and its speed."""

    predictions: np.ndarray  # int64 [N]
    input_dtype: str  # float32 | uint8 | int8
    latency_p50_ms: float
    latency_p95_ms: float
    throughput_per_s: float


def to_input(images: np.ndarray, detail: dict) -> np.ndarray:
    """Float 0–255 `images` as the input tensor takes them: quantized with its
    (scale, zero point) for an integer input, unchanged for a float one."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return images.astype(np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    quantized = np.round(images / scale + zero_point)
    return np.clip(quantized, info.min, info.max).astype(dtype)


def _interpreter(content: bytes, batch: int, shape: tuple[int, ...]):
    from ai_edge_litert.interpreter import Interpreter

    with filtered_native_stderr():  # LiteRT's "Created ... XNNPACK delegate" notice
        # One thread: on these small inputs a second thread only adds hand-off cost.
        interpreter = Interpreter(model_content=content, num_threads=1)
        interpreter.resize_tensor_input(
            interpreter.get_input_details()[0]["index"], [batch, *shape]
        )
        interpreter.allocate_tensors()
    return interpreter


def run_litert(content: bytes, images: np.ndarray, *, latency_runs: int, batch: int) -> LiteRTRun:
    """Predict `images` (float `[N, H, W, C]`, 0–255) with the flatbuffer `content`.

    Predictions come from batches of `batch` (the last one padded), whose wall time
    gives the throughput in images/s; the latency is `latency_runs` single-image
    invocations (set, invoke, read) after a warm-up, p50 and p95 in milliseconds.
    """
    shape = tuple(images.shape[1:])
    batched = _interpreter(content, batch, shape)
    inp, out = batched.get_input_details()[0], batched.get_output_details()[0]
    padded = -len(images) % batch
    quantized = to_input(np.concatenate([images, np.repeat(images[:1], padded, axis=0)]), inp)
    scores = []
    started = time.perf_counter()
    for start in range(0, len(quantized), batch):
        batched.set_tensor(inp["index"], quantized[start : start + batch])
        batched.invoke()
        scores.append(batched.get_tensor(out["index"]).copy())
    seconds = time.perf_counter() - started
    predictions = np.concatenate(scores)[: len(images)].argmax(axis=1).astype(np.int64)
    p50, p95 = single_image_latency(content, quantized[: len(images)], latency_runs)
    return LiteRTRun(
        predictions=predictions,
        input_dtype=np.dtype(inp["dtype"]).name,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        throughput_per_s=len(quantized) / seconds if seconds > 0 else 0.0,
    )


def single_image_latency(content: bytes, inputs: np.ndarray, runs: int) -> tuple[float, float]:
    """p50 and p95 milliseconds of one image's set-invoke-read, over `runs` calls
    cycling through `inputs` (already in the input tensor's dtype)."""
    single = _interpreter(content, 1, tuple(inputs.shape[1:]))
    inp = single.get_input_details()[0]["index"]
    out = single.get_output_details()[0]["index"]
    times = np.empty(runs)
    for i in range(LATENCY_WARMUP + runs):
        image = inputs[i % len(inputs)][np.newaxis]
        started = time.perf_counter_ns()
        single.set_tensor(inp, image)
        single.invoke()
        single.get_tensor(out)
        if i >= LATENCY_WARMUP:
            times[i - LATENCY_WARMUP] = (time.perf_counter_ns() - started) / 1e6
    p50, p95 = np.percentile(times, [50, 95])
    return float(p50), float(p95)
