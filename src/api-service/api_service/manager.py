"""Which model serves, and replacing it without a failed request when the alias moves."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from api_service.batching import MicroBatcher
from api_service.limits import Limits, serving_limits
from api_service.model import ServedModel, load_served_model
from api_service.monitoring import DriftWindow, Metrics
from api_service.settings import ServingSettings
from common.registry import ModelRegistry

log = logging.getLogger("api_service.manager")


@dataclass
class Active:
    """The serving model, the batcher in front of it and the upload limits it takes."""

    model: ServedModel
    batcher: MicroBatcher
    limits: Limits


class ModelManager:
    """Loads the alias's version, watches the alias, and swaps versions in safely.

    A new version is loaded and warmed up on a worker thread while the old one keeps
    serving; only then is the reference switched. The old batcher finishes what it
    had queued before it stops. A version that fails to load is recorded (readiness
    detail, metrics) and retried with a back-off, while the old one keeps serving.
    """

    def __init__(self, settings: ServingSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = ModelRegistry(settings.models_root, settings.model_name)
        self.active: Active | None = None
        self.alias_version: str | None = None
        self.load_error: dict[str, Any] | None = None
        self._failed_until: dict[str, float] = {}
        self._lock = threading.Lock()
        metrics.bind_drift(self._drift)

    def _drift(self) -> DriftWindow | None:
        active = self.active
        return active.batcher.drift if active is not None else None

    @property
    def limits(self) -> Limits:
        """The upload limits now: the served model's, or the defaults before one loads."""
        active = self.active
        return active.limits if active is not None else serving_limits(None, self.settings)[0]

    def check(self) -> None:
        """Resolve the alias and swap in its version if it is new (blocking; call in a thread)."""
        with self._lock:  # startup and the watcher never load two versions at once
            try:
                version = self.registry.resolve(self.settings.model_alias)
            except Exception as exc:  # a missing or unreadable registry is reported, not fatal
                self._failed(None, exc)
                return
            self.alias_version = version
            active = self.active
            if active is not None and active.model.version == version:
                self._clear_error()
                return
            if time.monotonic() < self._failed_until.get(version, 0.0):
                return
            try:
                model = load_served_model(self.settings, version)
                limits, warnings = serving_limits(model.spec, self.settings)
                # Starting loads and warms the model in its inference process.
                batcher = self._batcher(model, limits)
                batcher.start()
            except Exception as exc:  # keep the old model serving, whatever went wrong
                self.metrics.load_failures.labels(version=version).inc()
                self._failed(version, exc)
                # Versions are immutable, so retrying soon rarely helps; a transient
                # download error still gets another chance after a while.
                self._failed_until[version] = time.monotonic() + max(
                    30.0, 10 * self.settings.model_poll_seconds
                )
                return
            for warning in warnings:  # the contract break stays visible in the log
                log.warning("%s version %s: %s", model.name, version, warning)
            self._swap_in(Active(model, batcher, limits))

    def _batcher(self, model: ServedModel, limits: Limits) -> MicroBatcher:
        s = self.settings
        return MicroBatcher(
            model,
            max_batch=s.max_batch,
            max_wait_ms=s.max_wait_ms,
            max_queue=s.max_queue,
            max_pixels=limits.max_pixels,
            drift_window=s.drift_window,
            metrics=self.metrics,
            threads=s.serve_threads,
        )

    def _swap_in(self, new: Active) -> None:
        model = new.model
        old, self.active = self.active, new
        self._failed_until.pop(model.version, None)
        self._clear_error()
        self.metrics.serving(model.name, model.version, model.alias)
        if old is not None:
            self.metrics.swaps.inc()
            log.info("swapped %s version %s → %s", model.name, old.model.version, model.version)
            old.batcher.close()  # drains what was queued on the old version
        else:
            log.info("serving %s version %s", model.name, model.version)

    def _failed(self, version: str | None, exc: Exception) -> None:
        message = str(exc) or type(exc).__name__
        if self.load_error is None or self.load_error.get("message") != message:
            name = self.settings.model_name + (f" version {version}" if version else "")
            log.error("cannot load %s: %s", name, message)
        self.load_error = {
            "version": version,
            "message": message,
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        self.metrics.load_failing.set(1)

    def _clear_error(self) -> None:
        self.load_error = None
        self.metrics.load_failing.set(0)

    async def watch(self) -> None:
        """Re-check the alias every `model_poll_seconds` until cancelled."""
        while True:
            await asyncio.sleep(self.settings.model_poll_seconds)
            try:
                await anyio.to_thread.run_sync(self.check)
            except Exception:  # the watcher must outlive any single bad check
                log.exception("alias check failed")

    def close(self) -> None:
        if self.active is not None:
            self.active.batcher.close()
