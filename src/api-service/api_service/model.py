"""The served model: resolved from a registry alias and run with LiteRT."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from common import storage
from common.contracts import LABELS, LINEAGE, METRICS, PREPROCESS, Preprocess, read_labels
from common.registry import ModelRegistry
from common.settings import Settings

TFLITE_FILE = "model.tflite"


@dataclass
class ServedModel:
    """One loaded model version. `predict` is thread-safe."""

    name: str
    version: str
    alias: str
    labels: list[str]
    spec: Preprocess
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    interpreter: Interpreter
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for one uint8 `[H, W, C]` image."""
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        batch = pixels[np.newaxis].astype(inp["dtype"])
        # One interpreter holds one set of tensors: serialize set/invoke/get.
        with self._lock:
            self.interpreter.set_tensor(inp["index"], batch)
            self.interpreter.invoke()
            probabilities: np.ndarray = self.interpreter.get_tensor(out["index"])[0].copy()
        return probabilities


def _local_copy(uri: str, cache_dir: Path) -> Path:
    """A local folder holding the version: itself, or a cached download from gs://."""
    if not storage.is_gcs(uri):
        return Path(uri)
    bucket_key = uri[len(storage.GCS_SCHEME) :].replace("/", "__")
    target = cache_dir / bucket_key
    if not (target / TFLITE_FILE).exists():
        storage.download_tree(uri, target)
    return target


def load_served_model(settings: Settings) -> ServedModel:
    """Resolve `settings.model_alias` of `settings.model_name` and load its `.tflite`."""
    registry = ModelRegistry(settings.models_root, settings.model_name)
    version = registry.resolve(settings.model_alias)
    folder = _local_copy(registry.version_uri(version), Path(settings.model_cache_dir))
    interpreter = Interpreter(
        model_path=str(folder / TFLITE_FILE), num_threads=settings.serve_threads
    )
    interpreter.allocate_tensors()
    served = ServedModel(
        name=settings.model_name,
        version=version,
        alias=settings.model_alias,
        labels=read_labels(folder / LABELS),
        spec=Preprocess.model_validate(storage.read_json(folder / PREPROCESS)),
        metrics=storage.read_json(folder / METRICS),
        lineage=storage.read_json(folder / LINEAGE),
        interpreter=interpreter,
    )
    # Warm up so the first request does not pay for lazy initialisation.
    served.predict(
        np.zeros((served.spec.image_size, served.spec.image_size, served.spec.channels), np.uint8)
    )
    return served
