"""Single-image inference: the LiteRT path the API serves vs Keras `model.predict`.

Both run the same small_cnn (weights do not change the cost) on the same images,
one image per call, as requests arrive. Prints
`predict_litert_vs_keras: <ratio>x (ours X/s vs baseline Y/s)`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from common.contracts import Preprocess
from trainer.model import build_model

CALLS = 300
SPEC = Preprocess(image_size=32, color_mode="grayscale")


def rate(predict_one: Callable[[np.ndarray], object], images: np.ndarray) -> float:
    for image in images[:10]:  # warm-up
        predict_one(image)
    started = time.perf_counter()
    for image in images:
        predict_one(image)
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    model = build_model("small_cnn", SPEC, 10)
    images = np.random.default_rng(0).integers(0, 256, (CALLS, 32, 32, 1)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        model.export(str(Path(tmp) / "sm"), format="tf_saved_model", verbose=False)
        tflite = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "sm")).convert()
    interpreter = Interpreter(model_content=tflite, num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]

    def litert_one(image: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp, image[np.newaxis])
        interpreter.invoke()
        return interpreter.get_tensor(out)

    def keras_one(image: np.ndarray) -> np.ndarray:
        return model.predict(image[np.newaxis], verbose=0)

    ours = rate(litert_one, images)
    baseline = rate(keras_one, images[:100])
    print(
        f"predict_litert_vs_keras: {ours / baseline:.1f}x "
        f"(ours {ours:,.0f}/s vs baseline {baseline:,.0f}/s)"
    )


if __name__ == "__main__":
    main()
