"""The FastAPI application: the routes (`routes`), their middleware, and the static page."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from api_service.access_log import AccessLogMiddleware
from api_service.errors import add_error_handlers
from api_service.fast_path import PredictFastPath
from api_service.limits import MULTIPART_OVERHEAD
from api_service.manager import ModelManager
from api_service.monitoring import Metrics
from api_service.routes import BATCH_PATH, METRICS_PATH, PREDICT_PATH, router
from api_service.settings import ServingSettings, get_settings
from api_service.upload_guard import UploadGuardMiddleware


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model at startup, watch its alias while serving, close it at shutdown."""
    manager: ModelManager = app.state.manager
    await anyio.to_thread.run_sync(manager.check)
    watching = app.state.settings.model_poll_seconds > 0
    watcher = asyncio.create_task(manager.watch()) if watching else None
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await anyio.to_thread.run_sync(manager.close)


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    """Build the app; the model loads at startup and a failure leaves /readyz at 503.

    Raises FileNotFoundError when `settings.static_dir` has no index.html.
    """
    settings = settings or get_settings()
    metrics = Metrics()
    # FastAPIOffline serves Swagger UI's and ReDoc's files from the installed package
    # (under /static-offline-docs) instead of a CDN: /docs and /redoc work offline.
    app = FastAPIOffline(
        title="Mega Pipeline API",
        version="1.1.0",
        description="Image classification with the registered production model.",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.manager = manager = ModelManager(settings, metrics)
    add_error_handlers(app)
    app.include_router(router)
    _add_middleware(app, settings, manager, metrics)
    if settings.static_dir:
        static = Path(settings.static_dir)
        if not (static / "index.html").is_file():
            raise FileNotFoundError(f"static_dir {static} has no index.html")
        app.mount("/", StaticFiles(directory=static, html=True), name="frontend")
    return app


def _add_middleware(
    app: FastAPI, settings: ServingSettings, manager: ModelManager, metrics: Metrics
) -> None:
    """The last added runs first: access log and HTTP metrics (outermost) → CORS →
    upload guard → the predict fast path → routes, so the log and the metrics see the
    guard's 413/415 and the fast path's answers like the routes'."""
    upload_paths = frozenset({PREDICT_PATH, BATCH_PATH})
    app.add_middleware(PredictFastPath)
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
        in_flight=metrics.in_flight,
        record=metrics.http_recorder(),
        unmeasured=frozenset({METRICS_PATH}),  # scrapes would only measure themselves
        guarded=upload_paths,
    )
