"""A BentoML service with adaptive batching, running LiteRT.

Runs in its own environment (benchmarks/versus/peers/bentoml.in) and imports
nothing from the project. Written as BentoML's adaptive-batching guide shows for one
input per request: a `Classifier` service whose batchable API takes a stacked NumPy
batch (`batch_dim=0`, `max_batch_size`, `max_latency_ms`), and a front `Api` service
that takes the uploaded image (a `PIL.Image.Image` parameter named `file`), turns it
into pixels and calls the classifier through `bentoml.depends`, so BentoML's
dispatcher batches concurrent requests.

    python bentoml_service.py --model-dir VERSION_DIR --port 8000
    (execs `bentoml serve bentoml_service:Api`; settings pass in PEER_* variables)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

if __name__ != "__main__":
    import bentoml
    import numpy as np
    from PIL.Image import Image

    sys.path.insert(0, str(HERE))
    from litert_model import LiteRTClassifier

    MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "32"))
    MAX_LATENCY_MS = int(os.environ.get("PEER_MAX_LATENCY_MS", "1000"))

    @bentoml.service(workers=1)
    class Classifier:
        def __init__(self) -> None:
            self.model = LiteRTClassifier(os.environ["PEER_MODEL_DIR"])

        @bentoml.api(
            batchable=True, batch_dim=0, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS
        )
        def classify(self, pixels: np.ndarray) -> np.ndarray:
            return self.model.predict_batch(pixels)

    @bentoml.service(workers=1)
    class Api:
        classifier = bentoml.depends(Classifier)

        def __init__(self) -> None:
            self.model = LiteRTClassifier(os.environ["PEER_MODEL_DIR"])

        @bentoml.api(route="/v1/predict")
        async def predict(self, file: Image) -> dict[str, Any]:
            pixels = self.model.to_array(file)[None]
            probabilities = await self.classifier.to_async.classify(pixels)
            return self.model.answer(probabilities[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-latency-ms", type=int, default=1000)
    args = parser.parse_args()
    os.environ.update(
        PEER_MODEL_DIR=args.model_dir,
        PEER_MAX_BATCH=str(args.max_batch),
        PEER_MAX_LATENCY_MS=str(args.max_latency_ms),
        BENTOML_DO_NOT_TRACK="true",
    )
    command = [sys.executable, "-m", "bentoml", "serve", "bentoml_service:Api"]
    command += ["--host", "127.0.0.1", "--port", str(args.port), "--working-dir", str(HERE)]
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
