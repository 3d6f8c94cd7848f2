"""The served model: resolved from a registry alias, its files, and the LiteRT engine.

`load_served_model` fetches a version and reads what describes it; the `Engine`
that runs the `.tflite` lives in the inference process (`api_service.worker`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from api_service.settings import ServingSettings
from common import storage
from common.contracts import (
    KERAS_FILE,
    LABELS,
    LINEAGE,
    METRICS,
    OPTIMIZATION,
    PREPROCESS,
    SAVED_MODEL_DIR,
    TFLITE_FILE,
    TRAINING_CLASSES,
    ContractError,
    Lineage,
    Metrics,
    Optimization,
    Preprocess,
    TrainingClasses,
    read_labels,
)
from common.images import quantize
from common.registry import VERSION_FILE, ModelRegistry

log = logging.getLogger("api_service.model")


def _batch_sizes(max_batch: int) -> list[int]:
    """Powers of two up to `max_batch`, largest first: a batch is cut into these sizes."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch:
        sizes.append(sizes[-1] * 2)
    return sizes[::-1]


@dataclass
class ServedModel:
    """One model version: what it is, what it expects, and where its `.tflite` is."""

    name: str
    version: str
    alias: str
    labels: list[str]
    spec: Preprocess
    metrics: dict[str, Any]  # metrics.json and lineage.json as /v1/model shows them
    lineage: dict[str, Any]
    tflite: Path
    training_counts: dict[str, int] | None = None
    # optimization.json's variant rows, each with `served`; None for a version without it
    optimization: list[dict[str, Any]] | None = None


class _Runner:
    """One allocated interpreter and its tensor indices, looked up once, not per batch.

    Serves any variant the optimize stage makes: a float32 or float16-weights model
    takes the float 0–255 pixels as they are; a full-integer model (uint8 or int8
    input) takes them quantized with its input tensor's (scale, zero_point), and its
    integer output is dequantized with the output tensor's.
    """

    def __init__(self, interpreter: Interpreter) -> None:
        self.interpreter = interpreter
        inp = interpreter.get_input_details()[0]
        out = interpreter.get_output_details()[0]
        self.input_index: int = inp["index"]
        self.input_dtype: np.dtype = np.dtype(inp["dtype"])
        self.input_quant: tuple[float, int] = _quantization(inp)
        self.output_index: int = out["index"]
        self.output_quant: tuple[float, int] = _quantization(out)
        self.integer_output = np.issubdtype(np.dtype(out["dtype"]), np.integer)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Float32 class probabilities `[N, classes]` for uint8 images `[N, H, W, C]`."""
        self.interpreter.set_tensor(self.input_index, self._input(batch))
        self.interpreter.invoke()
        result: np.ndarray = self.interpreter.get_tensor(self.output_index)
        if not self.integer_output:
            return result.astype(np.float32)  # a copy: the tensor's buffer is reused
        return _dequantize_probabilities(result, *self.output_quant)

    def _input(self, batch: np.ndarray) -> np.ndarray:
        if not np.issubdtype(self.input_dtype, np.integer):
            return batch.astype(self.input_dtype, copy=False)
        if batch.dtype == self.input_dtype and self.input_quant == (1.0, 0):
            return batch  # uint8 pixels into a uint8 input of scale 1: no copy (~10 % of a call)
        return quantize(batch.astype(np.float32), *self.input_quant, self.input_dtype)


def _quantization(details: dict[str, Any]) -> tuple[float, int]:
    """A tensor's (scale, zero_point); (1.0, 0) for an unquantized tensor (scale 0)."""
    scale, zero_point = details.get("quantization", (0.0, 0))
    return (float(scale) or 1.0, int(zero_point))


def _dequantize_probabilities(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float probabilities from a quantized softmax, scaled to sum to 1 per row.

    An int8 softmax has steps of 1/256, so its dequantized rows sum to 1 only within a
    few steps; the API promises probabilities that sum to 1.
    """
    probabilities = np.clip((values.astype(np.float32) - zero_point) * scale, 0.0, None)
    totals = probabilities.sum(axis=-1, keepdims=True)
    classes = probabilities.shape[-1]
    # A row quantized to all zeros carries no preference: uniform rather than 0/0.
    return np.where(totals > 0, probabilities / np.maximum(totals, 1e-12), 1.0 / classes)


class Engine:
    """LiteRT interpreters for one `.tflite`, one per power-of-two batch size.

    Resizing a LiteRT input re-plans the XNNPACK delegate (milliseconds, more than
    the inference itself), so the engine keeps one interpreter per batch size and
    cuts a batch into those sizes: no resize and no padding on the hot path. Not
    thread-safe: interpreters hold their tensors.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], threads: int, max_batch: int) -> None:
        self.shape = shape
        self.runners = _interpreters(path, threads, max_batch, shape)

    def predict_batch(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities `[N, classes]` for uint8 images `[N, H, W, C]`."""
        outputs = []
        start = 0
        for size in sorted(self.runners, reverse=True):
            while pixels.shape[0] - start >= size:
                outputs.append(self.runners[size].run(pixels[start : start + size]))
                start += size
        return np.concatenate(outputs) if len(outputs) > 1 else outputs[0]

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for one uint8 `[H, W, C]` image."""
        probabilities: np.ndarray = self.predict_batch(pixels[np.newaxis])[0]
        return probabilities

    def warm_up(self, classes: int) -> None:
        """Run every interpreter once, so no request pays for lazy initialisation, and
        check the output matches the labels before the version may serve."""
        for size in self.runners:
            out = self.predict_batch(np.zeros((size, *self.shape), np.uint8))
            if out.shape != (size, classes):
                raise ValueError(f"model output {out.shape[1:]} does not match {classes} labels")


def _local_copy(uri: str, cache_dir: Path) -> Path:
    """A local folder holding the version: itself, or a cached download from gs://."""
    if not storage.is_gcs(uri):
        return Path(uri)
    bucket_key = uri[len(storage.GCS_SCHEME) :].replace("/", "__")
    target = cache_dir / bucket_key
    # version.json is the registry's completion marker: a cached copy without it is
    # a download that was cut short, and is fetched again whole.
    if not (target / VERSION_FILE).exists():
        with storage.building(target) as staging:
            # Serving needs neither the SavedModel nor the .keras file.
            storage.download_tree(uri, staging, skip=_not_for_serving)
    return target


def _not_for_serving(rel: str) -> bool:
    return rel.startswith(f"{SAVED_MODEL_DIR}/") or rel == KERAS_FILE


def _interpreters(
    path: Path, threads: int, max_batch: int, shape: tuple[int, ...]
) -> dict[int, _Runner]:
    """One allocated interpreter per batch size (only size 1 if the batch dim is fixed)."""
    first = Interpreter(model_path=str(path), num_threads=threads)
    signature = first.get_input_details()[0]["shape_signature"]
    dynamic = len(signature) > 0 and signature[0] == -1
    found: dict[int, _Runner] = {}
    for size in _batch_sizes(max_batch if dynamic else 1):
        interpreter = first if size == 1 else Interpreter(model_path=str(path), num_threads=threads)
        if size != 1:
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, [size, *shape], strict=True)
        interpreter.allocate_tensors()
        found[size] = _Runner(interpreter)
    return found


def training_class_counts(folder: Path, labels: list[str]) -> dict[str, int] | None:
    """Training examples per class, from the version's own `training_classes.json`.

    `trainer register` writes it from the training data's stats, so a version copied
    anywhere (a container, a cache) carries its drift reference. None, with a warning,
    for a version registered without it: the drift gauge then stays NaN.
    """
    try:
        classes = TrainingClasses.read(folder / TRAINING_CLASSES)
    except (OSError, ContractError) as exc:
        log.warning(
            "%s: no training class counts (%s); the drift gauge stays NaN. Register the "
            "model again (python -m trainer register, with its data present) to add them.",
            folder,
            exc,
        )
        return None
    return {label: classes.counts.get(label, 0) for label in labels}


def optimization_rows(folder: Path) -> list[dict[str, Any]] | None:
    """The version's optimization table: every variant's row, `served` marking the one in
    `model.tflite`. None when the version has no `optimization.json` (registered without
    `--optimized`), or with a warning when it is unreadable: the model still serves."""
    path = folder / OPTIMIZATION
    if not path.exists():
        return None
    try:
        report = Optimization.read(path)
    except (OSError, ContractError) as exc:
        log.warning("%s: no optimization table on /v1/model (%s)", folder, exc)
        return None
    return [
        {**row.model_dump(mode="json"), "served": row.name == report.selected}
        for row in report.variants
    ]


def load_served_model(settings: ServingSettings, version: str | None = None) -> ServedModel:
    """Fetch `version` (default: what `settings.model_alias` points at) and describe it."""
    registry = ModelRegistry(settings.models_root, settings.model_name)
    version = version or registry.resolve(settings.model_alias)
    folder = _local_copy(registry.version_uri(version), Path(settings.model_cache_dir))
    labels = read_labels(folder / LABELS)
    tflite = folder / TFLITE_FILE
    if not tflite.is_file():
        raise FileNotFoundError(f"version {version} has no {TFLITE_FILE}")
    return ServedModel(
        name=settings.model_name,
        version=version,
        alias=settings.model_alias,
        labels=labels,
        spec=Preprocess.read(folder / PREPROCESS),
        metrics=Metrics.read(folder / METRICS).document(),
        lineage=Lineage.read(folder / LINEAGE).document(),
        tflite=tflite,
        training_counts=training_class_counts(folder, labels),
        optimization=optimization_rows(folder),
    )
