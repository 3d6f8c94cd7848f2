"""The model code a team would write around a registered `.tflite`, shared by the peer servers.

Runs inside a peer's own environment: it imports nothing from the project. It reads
the version folder's `model.tflite`, `labels.json` and `preprocess.json` (image size
and colour mode), decodes an upload with Pillow as the usual tutorial does (open,
convert, resize bilinear), and runs LiteRT (`ai-edge-litert`).
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image


class LiteRTClassifier:
    """Pillow preprocessing and LiteRT inference for one model version folder.

    `predict_batch` keeps one allocated interpreter per batch size it has seen:
    resizing one interpreter's input for every batch would re-plan the model each
    time. Calls are serialised by a lock (an interpreter is not thread-safe).
    """

    def __init__(self, model_dir: str | Path, threads: int = 1) -> None:
        folder = Path(model_dir)
        self.path = str(folder / "model.tflite")
        self.threads = threads
        labels = json.loads((folder / "labels.json").read_text())
        self.labels: list[str] = labels["labels"] if isinstance(labels, dict) else labels
        spec = json.loads((folder / "preprocess.json").read_text())
        self.size = int(spec["image_size"])
        self.mode = "L" if spec["color_mode"] == "grayscale" else "RGB"
        self._by_size: dict[int, Interpreter] = {}
        self._lock = threading.Lock()
        self.predict_batch(np.zeros((1, *self.shape), np.uint8))  # load and warm up

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, 1 if self.mode == "L" else 3)

    def pixels(self, data: bytes) -> np.ndarray:
        """Upload bytes → uint8 `[H, W, C]` pixels."""
        image = Image.open(io.BytesIO(data)).convert(self.mode)
        return self.to_array(image)

    def to_array(self, image: Image.Image) -> np.ndarray:
        """A decoded image → uint8 `[H, W, C]` pixels."""
        image = image.convert(self.mode).resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8).reshape(self.shape)

    def _interpreter(self, batch: int) -> Interpreter:
        interpreter = self._by_size.get(batch)
        if interpreter is None:
            interpreter = Interpreter(model_path=self.path, num_threads=self.threads)
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, [batch, *self.shape])
            interpreter.allocate_tensors()
            self._by_size[batch] = interpreter
        return interpreter

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Float32 probabilities `[N, classes]` for uint8 pixels `[N, H, W, C]`."""
        with self._lock:
            interpreter = self._interpreter(len(batch))
            inp = interpreter.get_input_details()[0]
            out = interpreter.get_output_details()[0]
            interpreter.set_tensor(inp["index"], _quantize(batch, inp))
            interpreter.invoke()
            return _dequantize(interpreter.get_tensor(out["index"]), out)

    def answer(self, probabilities: np.ndarray) -> dict[str, Any]:
        """The response body: top label, its confidence and every class's probability."""
        values = probabilities.tolist()
        best = int(np.argmax(probabilities))
        return {
            "label": self.labels[best],
            "confidence": values[best],
            "probabilities": dict(zip(self.labels, values, strict=True)),
        }


def _quantize(batch: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(details["dtype"])
    scale, zero = details["quantization"]
    if not np.issubdtype(dtype, np.integer):
        return batch.astype(dtype)
    if not scale:
        return batch.astype(dtype)
    info = np.iinfo(dtype)
    values = np.round(batch.astype(np.float32) / scale) + zero
    return np.clip(values, info.min, info.max).astype(dtype)


def _dequantize(values: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    scale, zero = details["quantization"]
    if not np.issubdtype(values.dtype, np.integer) or not scale:
        return values.astype(np.float32)
    return ((values.astype(np.float32) - zero) * scale).astype(np.float32)
