"""The plain FastAPI service a team would write: a sync `def` predict endpoint running LiteRT.

Runs in its own environment (benchmarks/versus/peers/fastapi-litert.in) and imports
nothing from the project. FastAPI runs a `def` endpoint in its thread pool; the
upload is decoded with Pillow and classified one image per request.

    python fastapi_litert.py --model-dir VERSION_DIR --workers 2 --port 8000
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, UploadFile

HERE = Path(__file__).resolve().parent


def create_app() -> FastAPI:
    """The app; the model folder comes from PEER_MODEL_DIR (each uvicorn worker builds one)."""
    sys.path.insert(0, str(HERE))
    from litert_model import LiteRTClassifier

    model = LiteRTClassifier(os.environ["PEER_MODEL_DIR"])
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/predict")
    def predict(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        pixels = model.pixels(file.file.read())
        return model.answer(model.predict_batch(pixels[None])[0])

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ["PEER_MODEL_DIR"] = args.model_dir
    uvicorn.run(
        "fastapi_litert:create_app",
        factory=True,
        app_dir=str(HERE),
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
