"""The FastAPI application: prediction, model info, health, and the static page."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from api_service.model import ServedModel, load_served_model
from common.images import ImageDecodeError, decode_image, to_model_pixels
from common.settings import Settings, get_settings

log = logging.getLogger("api_service")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class Prediction(BaseModel):
    label: str = Field(description="The most probable class.")
    confidence: float = Field(ge=0, le=1, description="Probability of `label`.")
    probabilities: dict[str, float] = Field(description="Probability of every class.")
    model_version: str


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    labels: list[str]
    input: dict[str, Any]
    metrics: dict[str, Any]
    lineage: dict[str, Any]


class ApiError(HTTPException):
    """An HTTP error with a stable machine-readable code."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(status_code=status_code, detail=message)
        self.code = code


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (413, 422, 503)
}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the model loads at startup and a failure leaves /readyz at 503."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            app.state.model = await run_in_threadpool(load_served_model, settings)
            log.info("serving %s version %s", settings.model_name, app.state.model.version)
        except Exception as exc:  # any failure must leave the process up and say why
            app.state.model = None
            app.state.load_error = str(exc)
            log.error("no model loaded: %s", exc)
        yield

    app = FastAPI(
        title="Mega Pipeline API",
        version="1.0.0",
        description="Image classification with the registered production model.",
        lifespan=lifespan,
    )
    app.state.model = None
    app.state.load_error = "model is loading"

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or {404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        return _error(422, "invalid_request", problems)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(500, "internal_error", "internal error; see the server log")

    def current_model(request: Request) -> ServedModel:
        model: ServedModel | None = request.app.state.model
        if model is None:
            raise ApiError(
                503, "model_unavailable", f"no model loaded: {request.app.state.load_error}"
            )
        return model

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses=ERRORS)
    async def readyz(request: Request) -> dict[str, str]:
        """Readiness: a model is loaded and warmed up."""
        model = current_model(request)
        return {"status": "ready", "model": model.name, "model_version": model.version}

    @app.get("/v1/model", tags=["model"], responses=ERRORS)
    async def model_info(request: Request) -> ModelInfo:
        """The served model's version, classes, input and test metrics."""
        model = current_model(request)
        return ModelInfo(
            name=model.name,
            version=model.version,
            alias=model.alias,
            labels=model.labels,
            input=model.spec.model_dump(),
            metrics=model.metrics,
            lineage=model.lineage,
        )

    @app.post("/v1/predict", tags=["model"], responses=ERRORS)
    async def predict(
        request: Request,
        file: Annotated[UploadFile, File(description="An image file (PNG, JPEG, …).")],
    ) -> Prediction:
        """Classify one uploaded image."""
        model = current_model(request)
        if file.size is not None and file.size > settings.max_upload_bytes:
            raise ApiError(
                413,
                "too_large",
                f"file is {file.size:,} bytes; the limit is {settings.max_upload_bytes:,}",
            )
        data = await file.read()
        try:
            pixels = to_model_pixels(decode_image(data), model.spec)
        except ImageDecodeError as exc:
            raise ApiError(422, "invalid_image", f"{file.filename or 'upload'}: {exc}") from exc
        probabilities = await run_in_threadpool(model.predict, pixels)
        best = int(probabilities.argmax())
        return Prediction(
            label=model.labels[best],
            confidence=float(probabilities[best]),
            probabilities={
                label: float(p) for label, p in zip(model.labels, probabilities, strict=True)
            },
            model_version=model.version,
        )

    if settings.static_dir:
        static = Path(settings.static_dir)
        if not (static / "index.html").is_file():
            raise FileNotFoundError(f"static_dir {static} has no index.html")
        app.mount("/", StaticFiles(directory=static, html=True), name="frontend")
    return app
