"""A LitServe service with LitServe's request batching, running LiteRT.

Runs in its own environment (benchmarks/versus/peers/litserve.in) and imports
nothing from the project. Written as LitServe's docs show: a `LitAPI` whose
`decode_request` turns the uploaded file into pixels, whose `predict` takes the
stacked batch (LitServe's default `batch` stacks NumPy arrays) and returns one row
per request, and whose `encode_response` builds the JSON body; `max_batch_size` and
`batch_timeout` set on the `LitAPI`.

    python litserve_app.py --model-dir VERSION_DIR --max-batch 32 --timeout-ms 2 --port 8000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from litert_model import LiteRTClassifier  # noqa: E402


class DigitsAPI(ls.LitAPI):
    def __init__(self, model_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        self.model = LiteRTClassifier(self.model_dir)

    # No annotations on `request` and on encode_response's result: LitServe reads them to
    # build the endpoint, and without them it passes the parsed form and returns JSON.
    def decode_request(self, request):
        return self.model.pixels(request["file"].file.read())

    def predict(self, batch: np.ndarray) -> list[np.ndarray]:
        return list(self.model.predict_batch(batch))

    def encode_response(self, output: np.ndarray):
        return self.model.answer(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--timeout-ms", type=float, default=2.0)
    parser.add_argument("--api-servers", type=int, default=None)
    args = parser.parse_args()
    api = DigitsAPI(
        args.model_dir,
        max_batch_size=args.max_batch,
        batch_timeout=args.timeout_ms / 1000,
        api_path="/v1/predict",
    )
    server = ls.LitServer(api, accelerator="cpu", healthcheck_path="/readyz")
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=args.api_servers,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
