"""Running LiteRT flatbuffers: predictions and timings in the runtime that serves them.

Every variant is judged in ai_edge_litert, not in Keras: quantization error, operator
fallbacks and the interpreter's own overhead all show up only there. No TensorFlow
import here: register times the variants with this module alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from common.images import quantize
from trainer.quiet import filtered_native_stderr

LATENCY_WARMUP = 10  # invocations before timing: first calls allocate and pack weights
THROUGHPUT_BATCHES = 20  # timed batch invocations for the throughput


@dataclass(frozen=True)
class Predictions:
    """A variant's answers on a split: predicted class ids and the input type it takes."""

    classes: np.ndarray  # int64 [N]
    input_dtype: str  # float32 | uint8 | int8


@dataclass(frozen=True)
class Speed:
    """How fast a variant runs on this machine (one interpreter thread)."""

    latency_p50_ms: float  # one image: set, invoke, read
    latency_p95_ms: float
    throughput_per_s: float  # images per second in batches


def to_input(images: np.ndarray, detail: dict) -> np.ndarray:
    """Float 0–255 `images` as the input tensor takes them: quantized with its
    (scale, zero point) for an integer input, unchanged for a float one."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return images.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return quantize(images, scale, int(zero_point), dtype)


def _interpreter(content: bytes, batch: int, shape: tuple[int, ...]):
    """An interpreter for batches of `batch` images of `shape` `(H, W, C)`.

    Raises:
        ValueError: the model takes images of another shape (a dimension it declares
            dynamic, -1, takes any size), or `content` is not a LiteRT model.
    """
    from ai_edge_litert.interpreter import Interpreter

    with filtered_native_stderr():  # LiteRT's "Created ... XNNPACK delegate" notice
        # One thread: on these small inputs a second thread only adds hand-off cost.
        interpreter = Interpreter(model_content=content, num_threads=1)
        detail = interpreter.get_input_details()[0]
        # Resizing would accept another image size in a model that pools globally, and
        # the figures would then be of images it is never served.
        declared = [int(size) for size in detail["shape_signature"][1:]]
        fits = len(declared) == len(shape) and all(
            d in (-1, s) for d, s in zip(declared, shape, strict=True)
        )
        if not fits:
            raise ValueError(f"the model takes images of shape {declared}, not {list(shape)}")
        interpreter.resize_tensor_input(detail["index"], [batch, *shape])
        interpreter.allocate_tensors()
    return interpreter


def predict_litert(content: bytes, images: np.ndarray, *, batch: int) -> Predictions:
    """The classes the flatbuffer `content` predicts for `images` (float `[N, H, W, C]`,
    0–255), run in batches of `batch` (the last one padded). The same bytes and images
    give the same answers on every run."""
    batched = _interpreter(content, batch, tuple(images.shape[1:]))
    inp, out = batched.get_input_details()[0], batched.get_output_details()[0]
    padded = -len(images) % batch
    quantized = to_input(np.concatenate([images, np.repeat(images[:1], padded, axis=0)]), inp)
    scores = []
    for start in range(0, len(quantized), batch):
        batched.set_tensor(inp["index"], quantized[start : start + batch])
        batched.invoke()
        scores.append(batched.get_tensor(out["index"]).copy())
    classes = np.concatenate(scores)[: len(images)].argmax(axis=1).astype(np.int64)
    return Predictions(classes=classes, input_dtype=np.dtype(inp["dtype"]).name)


def time_litert(content: bytes, images: np.ndarray, *, latency_runs: int, batch: int) -> Speed:
    """Time the flatbuffer `content` on `images` (float `[N, H, W, C]`, 0–255).

    Latency: `latency_runs` single-image calls cycling through `images`, after a warm-up,
    p50 and p95 in milliseconds. Throughput: `THROUGHPUT_BATCHES` calls on a batch of
    `batch` images (`images` repeated to fill it), in images per second.
    Machine-dependent and different on every run, which is why register takes these
    figures when it chooses the served variant, not the reproducible optimize stage.
    """
    shape = tuple(images.shape[1:])
    batched = _interpreter(content, batch, shape)
    inp, out = batched.get_input_details()[0], batched.get_output_details()[0]
    filled = to_input(np.resize(images, (batch, *shape)), inp)
    batched.set_tensor(inp["index"], filled)
    batched.invoke()  # warm-up: the first call packs the weights
    started = time.perf_counter()
    for _ in range(THROUGHPUT_BATCHES):
        batched.set_tensor(inp["index"], filled)
        batched.invoke()
        batched.get_tensor(out["index"])
    seconds = time.perf_counter() - started
    p50, p95 = single_image_latency(content, images, latency_runs)
    return Speed(
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        throughput_per_s=THROUGHPUT_BATCHES * batch / seconds if seconds > 0 else 0.0,
    )


def single_image_latency(content: bytes, images: np.ndarray, runs: int) -> tuple[float, float]:
    """p50 and p95 milliseconds of one image's set-invoke-read, over `runs` calls
    cycling through `images` (float `[N, H, W, C]`, 0–255; quantized here for an integer
    input)."""
    single = _interpreter(content, 1, tuple(images.shape[1:]))
    detail = single.get_input_details()[0]
    inputs = to_input(images, detail)
    inp, out = detail["index"], single.get_output_details()[0]["index"]
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
