"""Prometheus metrics of the service and the drift gauge.

Every app gets its own `CollectorRegistry`, so several apps in one process (tests)
never collide on metric names.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets (seconds) for HTTP requests and batches: sub-millisecond to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class DriftWindow:
    """Live class distribution over the latest predictions vs the training distribution.

    The gauge is the total variation distance, `½ Σ |live − training|` over classes:
    0 when the shares match, 1 when they do not overlap at all. It reads as "the
    fraction of predictions that would have to change class to look like training".
    """

    def __init__(self, labels: list[str], training: dict[str, int] | None, size: int) -> None:
        self.labels = labels
        total = sum(training.values()) if training else 0
        self.reference = (
            np.array([training.get(label, 0) / total for label in labels])
            if training and total
            else None
        )
        self._window: deque[int] = deque()
        self._size = max(1, size)
        self._counts = np.zeros(len(labels), dtype=np.int64)
        self._lock = threading.Lock()

    def add(self, classes: Iterable[int]) -> None:
        with self._lock:
            for index in classes:
                self._window.append(index)
                self._counts[index] += 1
                if len(self._window) > self._size:
                    self._counts[self._window.popleft()] -= 1

    def __len__(self) -> int:
        return len(self._window)

    def distance(self) -> float:
        """Total variation distance; NaN without a reference or before any prediction."""
        with self._lock:
            seen = len(self._window)
            if self.reference is None or seen == 0:
                return math.nan
            live = self._counts / seen
        return float(0.5 * np.abs(live - self.reference).sum())


class Metrics:
    """Every metric the service exposes, HTTP ones included."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests by route template, method and status.",
            ["handler", "method", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["handler", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "mega_http_requests_in_flight",
            "HTTP requests being handled (received, not yet answered).",
            registry=r,
        )
        self.batch_size = Histogram(
            "mega_inference_batch_size",
            "Images per inference batch.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "mega_inference_seconds",
            "Model time of one batch (LiteRT invoke of all its images).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess_seconds = Histogram(
            "mega_preprocess_seconds",
            "Decode and preprocessing time of one batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "mega_inference_queue_seconds",
            "Time an image waited in the queue before its batch started.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "mega_inference_queue_depth", "Images waiting for a batch.", registry=r
        )
        self.predictions = Counter(
            "mega_predictions",
            "Predictions by predicted class and model version.",
            ["model_version", "label"],
            registry=r,
        )
        self.rejected = Counter(
            "mega_rejected_inputs", "Uploaded files refused, by error code.", ["code"], registry=r
        )
        self.model_info = Gauge(
            "mega_model_info",
            "1 for the model version being served.",
            ["name", "version", "alias"],
            registry=r,
        )
        self.model_version = Gauge(
            "mega_model_version",
            "The served model version (number); 0 before one loads.",
            registry=r,
        )
        self.swaps = Counter("mega_model_swaps", "Model versions swapped in.", registry=r)
        self.load_failures = Counter(
            "mega_model_load_failures",
            "Failed attempts to load a model version.",
            ["version"],
            registry=r,
        )
        self.load_failing = Gauge(
            "mega_model_load_failing",
            "1 while the alias points at a version that could not be loaded.",
            registry=r,
        )
        self.drift = Gauge(
            "mega_prediction_drift",
            "Total variation distance between the predicted-class shares of the latest "
            "predictions and the training class shares (0 = same, 1 = disjoint; NaN = unknown).",
            registry=r,
        )
        self.drift_window = Gauge(
            "mega_drift_window_predictions",
            "Predictions in the drift window.",
            registry=r,
        )

    def http_recorder(self) -> Callable[[str, str, int, float], None]:
        """`record(handler, method, status, seconds)` for the access-log middleware.

        Label lookups cost more than the observation itself, so each label set's
        children are looked up once and kept.
        """
        children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

        def record(handler: str, method: str, status: int, seconds: float) -> None:
            key = (handler, method, status)
            pair = children.get(key)
            if pair is None:
                labels = {"handler": handler, "method": method, "status": str(status)}
                pair = children[key] = (
                    self.http_requests.labels(**labels),
                    self.http_latency.labels(**labels),
                )
            pair[0].inc()
            pair[1].observe(seconds)

        return record

    def bind_drift(self, current: Callable[[], DriftWindow | None]) -> None:
        """Compute the drift gauges at scrape time from whatever model is current."""

        def distance() -> float:
            window = current()
            return window.distance() if window is not None else math.nan

        def seen() -> float:
            window = current()
            return float(len(window)) if window is not None else 0.0

        self.drift.set_function(distance)
        self.drift_window.set_function(seen)

    def serving(self, name: str, version: str, alias: str) -> None:
        """Record that `version` now serves (and no other)."""
        self.model_info.clear()
        self.model_info.labels(name=name, version=version, alias=alias).set(1)
        self.model_version.set(float(version) if version.isdigit() else 0.0)
