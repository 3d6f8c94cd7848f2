"""The API's routes: prediction, model info, health and metrics.

The routes hold no state of their own: the model manager, the metrics and the
settings come from `app.state` (set by `create_app`) through the dependencies below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Protocol

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import FormData, UploadFile

from api_service.batching import BatcherClosedError
from api_service.errors import ApiError, ErrorCode
from api_service.inputs import InputError, check_part_type, check_size, sniff
from api_service.manager import Active, ModelManager
from api_service.model import ServedModel
from api_service.monitoring import Metrics
from api_service.multipart import single_file_part
from api_service.schemas import (
    ERRORS,
    BatchPrediction,
    ErrorDetail,
    FileResult,
    ModelInfo,
    Prediction,
    Readiness,
    multipart_body,
)
from api_service.settings import ServingSettings

PREDICT_PATH = "/v1/predict"
BATCH_PATH = "/v1/predict/batch"
METRICS_PATH = "/metrics"
# How often a request retries when a swap closes the batcher it was queued on.
SWAP_RETRIES = 3


# Async, so FastAPI calls them on the event loop rather than in a worker thread.
async def _manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


async def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def _settings(request: Request) -> ServingSettings:
    settings: ServingSettings = request.app.state.settings
    return settings


Manager = Annotated[ModelManager, Depends(_manager)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
SettingsDep = Annotated[ServingSettings, Depends(_settings)]

router = APIRouter()


def current(manager: ModelManager) -> Active:
    """The serving version; 503 `model_unavailable` (with the load error) while there is none."""
    active = manager.active
    if active is None:
        reason = (manager.load_error or {}).get("message", "model is loading")
        raise ApiError(503, ErrorCode.MODEL_UNAVAILABLE, f"no model loaded: {reason}")
    return active


def file_parts(form: FormData, field: str) -> list[UploadFile]:
    """The form's file parts named `field`; 422 when there is none or one is not a file."""
    parts = form.getlist(field)
    if not parts or not all(isinstance(p, UploadFile) for p in parts):
        raise ApiError(422, ErrorCode.INVALID_REQUEST, f"{field}: an image file part is required")
    return parts  # type: ignore[return-value]


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


class Upload(Protocol):
    """What the checks read of an uploaded file: Starlette's `UploadFile` or a `FilePart`."""

    @property
    def content_type(self) -> str | None: ...

    async def read(self) -> bytes: ...


async def _checked(uploads: Sequence[Upload], manager: ModelManager) -> list[bytes | InputError]:
    """Each upload's bytes, or the refusal of its declared type, size or signature."""
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
    return checked


async def classify(
    uploads: Sequence[Upload], manager: ModelManager, metrics: Metrics
) -> tuple[ServedModel, list[dict[str, Any] | InputError]]:
    """Check every upload, then predict the acceptable ones together in one submission.

    Returns the model that answered and, per upload in order, a `Prediction` dict or
    the `InputError` that refused it. Raises `ApiError` 503 without a model or when
    the queue is full.
    """
    checked = await _checked(uploads, manager)
    images = [item for item in checked if isinstance(item, bytes)]
    # A swap between picking the model and queueing closes its batcher: take the new one.
    for _ in range(SWAP_RETRIES):
        active = current(manager)
        try:
            outputs = await active.batcher.predict_many(images) if images else []
        except BatcherClosedError:
            continue
        except InputError as exc:
            raise ApiError.from_input(exc) from exc
        produced = iter(outputs)
        results = [next(produced) if isinstance(item, bytes) else item for item in checked]
        for result in results:
            if isinstance(result, InputError):
                metrics.rejected.labels(code=result.code).inc()
        return active.model, [
            result if isinstance(result, InputError) else _prediction(active.model, result)
            for result in results
        ]
    raise ApiError(503, ErrorCode.MODEL_UNAVAILABLE, "the model is being replaced; retry")


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], responses=ERRORS)
async def readyz(manager: Manager) -> Readiness:
    """Readiness: a model is loaded and warmed up; `load_error` shows a failed newer version."""
    model = current(manager).model
    return Readiness(
        status="ready",
        model=model.name,
        model_version=model.version,
        alias=model.alias,
        alias_version=manager.alias_version,
        load_error=manager.load_error,
    )


@router.get("/v1/model", tags=["model"], responses=ERRORS)
async def model_info(manager: Manager) -> ModelInfo:
    """The served model's version, classes, input and test metrics."""
    model = current(manager).model
    return ModelInfo(
        name=model.name,
        version=model.version,
        alias=model.alias,
        labels=model.labels,
        input=model.spec.model_dump(),
        metrics=model.metrics,
        lineage=model.lineage,
        optimization=model.optimization,
    )


# Both predict routes read the multipart form themselves (`file_parts`) rather
# than through FastAPI `File` parameters: that machinery costs more per request
# than the model. `multipart_body` documents the form in the OpenAPI schema.
@router.post(
    PREDICT_PATH,
    tags=["model"],
    responses=ERRORS,
    response_model=Prediction,
    openapi_extra=multipart_body("file", "An image file (PNG, JPEG, …)."),
)
async def predict(request: Request) -> Response:
    """Classify one uploaded image."""
    # The app normally answers this route in `PredictFastPath`, before routing; the
    # route documents it and answers it where the fast path does not apply.
    return await predict_response(request)


async def predict_response(request: Request) -> Response:
    """The answer to POST /v1/predict: a `Prediction`, or an `ApiError` raised."""
    manager: ModelManager = request.app.state.manager
    metrics: Metrics = request.app.state.metrics
    # The usual one-file body is read directly (api_service.multipart); any other
    # form goes through Starlette's parser, which reads the same buffered body.
    content_type = request.headers.get("content-type", "")
    part = single_file_part(content_type, await request.body(), "file")
    if part is not None:
        filename: str | None = part.filename
        _, (result,) = await classify([part], manager, metrics)
    else:
        async with request.form() as form:
            file = file_parts(form, "file")[0]
            filename = file.filename
            _, (result,) = await classify([file], manager, metrics)
    if isinstance(result, InputError):
        raise ApiError.from_input(result, f"{filename or 'upload'}: {result}")
    # Serialized directly: re-validating our own numbers costs more than the model.
    return Response(orjson.dumps(result), media_type="application/json")


@router.post(
    BATCH_PATH,
    tags=["model"],
    responses=ERRORS,
    openapi_extra=multipart_body("files", "Several image files, one `files` part each.", many=True),
)
async def predict_batch(
    request: Request, manager: Manager, metrics: MetricsDep, settings: SettingsDep
) -> BatchPrediction:
    """Classify several images at once; each file gets its own result or error."""
    async with request.form() as form:
        files = file_parts(form, "files")
        limit = settings.max_files_per_request
        if len(files) > limit:
            raise ApiError(
                413,
                ErrorCode.TOO_MANY_FILES,
                f"{len(files)} files; the limit is {limit} per request",
            )
        model, results = await classify(files, manager, metrics)
    return BatchPrediction(
        model_version=model.version,
        results=[
            _file_result(upload, result) for upload, result in zip(files, results, strict=True)
        ],
    )


def _file_result(upload: UploadFile, result: dict[str, Any] | InputError) -> FileResult:
    if isinstance(result, InputError):
        return FileResult(
            filename=upload.filename,
            status=result.status,
            error=ErrorDetail(code=result.code, message=result.message),
        )
    return FileResult(filename=upload.filename, status=200, prediction=Prediction(**result))


@router.get(METRICS_PATH, include_in_schema=False)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
