"""The FastAPI application: prediction, model info, health, metrics, and the static page."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np
import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from api_service.batching import BatcherClosedError
from api_service.inputs import InputError, check_part_type, check_size, sniff
from api_service.limits import MULTIPART_OVERHEAD
from api_service.middleware import AccessLogMiddleware, UploadGuardMiddleware
from api_service.model import ServedModel
from api_service.monitoring import Metrics
from api_service.manager import Active, ModelManager
from common.settings import Settings, get_settings

log = logging.getLogger("api_service")

PREDICT_PATH = "/v1/predict"
BATCH_PATH = "/v1/predict/batch"
METRICS_PATH = "/metrics"


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


class FileResult(BaseModel):
    """One file of a batch request: its prediction, or why it was refused."""

    filename: str | None
    status: int = Field(description="The HTTP status this file alone would have got.")
    prediction: Prediction | None = None
    error: ErrorDetail | None = None


class BatchPrediction(BaseModel):
    model_version: str
    results: list[FileResult] = Field(description="One entry per uploaded file, in order.")


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    labels: list[str]
    input: dict[str, Any]
    metrics: dict[str, Any]
    lineage: dict[str, Any]


class Readiness(BaseModel):
    status: str
    model: str
    model_version: str
    alias: str
    alias_version: str | None = Field(description="The version the alias points at now.")
    load_error: dict[str, Any] | None = Field(
        description="The last failed load while the served version kept serving, if any."
    )


class ApiError(HTTPException):
    """An HTTP error with a stable machine-readable code."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(status_code=status_code, detail=message)
        self.code = code


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (413, 415, 422, 503)
}


def multipart_body(field: str, description: str, many: bool = False) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that reads its file part(s) itself."""
    part: dict[str, Any] = {"type": "string", "format": "binary", "description": description}
    if many:
        part = {"type": "array", "items": part, "description": description}
    schema = {"type": "object", "required": [field], "properties": {field: part}}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


def file_parts(form: FormData, field: str) -> list[UploadFile]:
    """The form's file parts named `field`; 422 when there is none or one is not a file."""
    parts = form.getlist(field)
    if not parts or not all(isinstance(p, UploadFile) for p in parts):
        raise ApiError(422, "invalid_request", f"{field}: an image file part is required")
    return parts  # type: ignore[return-value]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


def _prediction(model: ServedModel, probabilities: np.ndarray) -> dict[str, Any]:
    """A `Prediction` as a plain dict: the hot path skips model validation (types are ours)."""
    values = probabilities.tolist()
    best = max(range(len(values)), key=values.__getitem__)
    return {
        "label": model.labels[best],
        "confidence": values[best],
        "probabilities": dict(zip(model.labels, values, strict=True)),
        "model_version": model.version,
    }


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the model loads at startup and a failure leaves /readyz at 503."""
    settings = settings or get_settings()
    monitoring = Metrics()
    manager = ModelManager(settings, monitoring)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(manager.check)
        watcher = asyncio.create_task(manager.watch()) if settings.model_poll_seconds > 0 else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await anyio.to_thread.run_sync(manager.close)

    # FastAPIOffline serves Swagger UI's and ReDoc's files from the installed package
    # (under /static-offline-docs) instead of a CDN: /docs and /redoc work offline.
    app = FastAPIOffline(
        title="Mega Pipeline API",
        version="1.1.0",
        description="Image classification with the registered production model.",
        lifespan=lifespan,
    )
    app.state.manager = manager
    app.state.metrics = monitoring

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

    def current() -> Active:
        active = manager.active
        if active is None:
            reason = (manager.load_error or {}).get("message", "model is loading")
            raise ApiError(503, "model_unavailable", f"no model loaded: {reason}")
        return active

    async def classify(
        uploads: Sequence[UploadFile],
    ) -> tuple[ServedModel, list[Any]]:
        """Check every upload, then predict the acceptable ones together in one submission."""
        checked: list[bytes | InputError] = []
        limits = manager.limits
        for upload in uploads:
            try:
                check_part_type(upload.content_type)
                data = await upload.read()
                check_size(data, limits)
                sniff(data)  # signature only; the header and pixels are read off the loop
                checked.append(data)
            except InputError as exc:
                checked.append(exc)
        images = [item for item in checked if isinstance(item, bytes)]
        # A swap between picking the model and queueing closes its batcher: take the new one.
        for _ in range(3):
            active = current()
            try:
                outputs = await active.batcher.predict_many(images) if images else []
            except BatcherClosedError:
                continue
            except InputError as exc:
                raise ApiError(exc.status, exc.code, exc.message) from exc
            produced = iter(outputs)
            results = [next(produced) if isinstance(item, bytes) else item for item in checked]
            for result in results:
                if isinstance(result, InputError):
                    monitoring.rejected.labels(code=result.code).inc()
            return active.model, [
                result if isinstance(result, InputError) else _prediction(active.model, result)
                for result in results
            ]
        raise ApiError(503, "model_unavailable", "the model is being replaced; retry")

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses=ERRORS)
    async def readyz() -> Readiness:
        """Readiness: a model is loaded and warmed up; `load_error` shows a failed newer version."""
        model = current().model
        return Readiness(
            status="ready",
            model=model.name,
            model_version=model.version,
            alias=model.alias,
            alias_version=manager.alias_version,
            load_error=manager.load_error,
        )

    @app.get("/v1/model", tags=["model"], responses=ERRORS)
    async def model_info() -> ModelInfo:
        """The served model's version, classes, input and test metrics."""
        model = current().model
        return ModelInfo(
            name=model.name,
            version=model.version,
            alias=model.alias,
            labels=model.labels,
            input=model.spec.model_dump(),
            metrics=model.metrics,
            lineage=model.lineage,
        )

    # Both predict routes read the multipart form themselves (`file_parts`) rather
    # than through FastAPI `File` parameters: that machinery costs more per request
    # than the model. `multipart_body` documents the form in the OpenAPI schema.
    @app.post(
        PREDICT_PATH,
        tags=["model"],
        responses=ERRORS,
        response_model=Prediction,
        openapi_extra=multipart_body("file", "An image file (PNG, JPEG, …)."),
    )
    async def predict(request: Request) -> Response:
        """Classify one uploaded image."""
        async with request.form() as form:
            file = file_parts(form, "file")[0]
            _, (result,) = await classify([file])
        if isinstance(result, InputError):
            raise ApiError(result.status, result.code, f"{file.filename or 'upload'}: {result}")
        # Serialized directly: re-validating our own numbers costs more than the model.
        return Response(orjson.dumps(result), media_type="application/json")

    @app.post(
        BATCH_PATH,
        tags=["model"],
        responses=ERRORS,
        openapi_extra=multipart_body(
            "files", "Several image files, one `files` part each.", many=True
        ),
    )
    async def predict_batch(request: Request) -> BatchPrediction:
        """Classify several images at once; each file gets its own result or error."""
        async with request.form() as form:
            files = file_parts(form, "files")
            limit = settings.max_files_per_request
            if len(files) > limit:
                raise ApiError(
                    413, "too_many_files", f"{len(files)} files; the limit is {limit} per request"
                )
            return await batch_prediction(files)

    async def batch_prediction(files: list[UploadFile]) -> BatchPrediction:
        model, results = await classify(files)
        return BatchPrediction(
            model_version=model.version,
            results=[
                FileResult(
                    filename=upload.filename,
                    status=result.status,
                    error=ErrorDetail(code=result.code, message=result.message),
                )
                if isinstance(result, InputError)
                else FileResult(
                    filename=upload.filename, status=200, prediction=Prediction(**result)
                )
                for upload, result in zip(files, results, strict=True)
            ],
        )

    @app.get(METRICS_PATH, include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(monitoring.registry), media_type=CONTENT_TYPE_LATEST)

    upload_paths = frozenset({PREDICT_PATH, BATCH_PATH})
    # Middleware: the last added runs first. Access log and HTTP metrics (outermost) →
    # CORS → upload guard → routes, so the log and the metrics see the guard's 413/415.
    # The body limit follows the served model (api_service.limits): one file's limit
    # and its multipart framing, so a batch carries at most one file's worth of bytes.
    app.add_middleware(
        UploadGuardMiddleware,
        max_bytes=lambda: (manager.limits.max_bytes, manager.limits.bytes_setting),
        multipart_paths=upload_paths,
        overhead=MULTIPART_OVERHEAD,
    )
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
            max_age=600,
        )
    app.add_middleware(
        AccessLogMiddleware,
        enabled=settings.access_log,
        in_flight=monitoring.in_flight,
        record=monitoring.http_recorder(),
        unmeasured=frozenset({METRICS_PATH}),  # scrapes would only measure themselves
        guarded=upload_paths,
    )

    if settings.static_dir:
        static = Path(settings.static_dir)
        if not (static / "index.html").is_file():
            raise FileNotFoundError(f"static_dir {static} has no index.html")
        app.mount("/", StaticFiles(directory=static, html=True), name="frontend")
    return app
