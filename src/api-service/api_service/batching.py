"""Micro-batching: requests queue images, one worker thread decodes and infers them in batches.

The event loop only enqueues bytes and awaits a future; decoding and LiteRT run on
the worker thread (both release the GIL for their heavy parts), so a saturated model
never delays `/healthz`. A batch closes at `max_batch` images or `max_wait_ms` after
its first image, whichever comes first; whatever queued while the previous batch ran
joins the next one at once, so batches grow with load on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from api_service.inputs import InputError, prepare
from api_service.model import ServedModel
from api_service.monitoring import DriftWindow, Metrics

log = logging.getLogger("api_service.batching")


class BatcherClosedError(RuntimeError):
    """The batcher was retired (its model was swapped out); use the current one."""


@dataclass
class _Item:
    data: bytes
    future: asyncio.Future[np.ndarray | InputError]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


_STOP = object()


def _deliver(results: list[tuple[asyncio.Future[np.ndarray | InputError], object]]) -> None:
    """Runs on the event loop: complete the futures whose requests are still waiting."""
    for future, result in results:
        if future.done():  # the client went away and the request was cancelled
            continue
        if isinstance(result, BaseException) and not isinstance(result, InputError):
            future.set_exception(result)
        else:
            future.set_result(result)  # type: ignore[arg-type]


class MicroBatcher:
    """A queue and a worker thread in front of one `ServedModel`."""

    def __init__(
        self,
        model: ServedModel,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        max_pixels: int,
        drift_window: int,
        metrics: Metrics,
    ) -> None:
        self.model = model
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self.max_queue = max_queue
        self.max_pixels = max_pixels
        self.metrics = metrics
        self.drift = DriftWindow(model.labels, model.training_counts, drift_window)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"batcher-v{model.version}", daemon=True
        )
        self._predicted = {
            i: metrics.predictions.labels(model_version=model.version, label=label)
            for i, label in enumerate(model.labels)
        }

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float | None = 30) -> None:
        """Stop taking work, finish what is queued, then end the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    async def predict_many(self, images: list[bytes]) -> list[np.ndarray | InputError]:
        """Probabilities for each image (or the `InputError` that refused it)."""
        loop = asyncio.get_running_loop()
        items = [_Item(data, loop.create_future(), loop) for data in images]
        # The lock orders puts against close(): nothing can land behind the stop marker.
        with self._lock:
            if self._closed:
                raise BatcherClosedError
            if self._queue.qsize() + len(items) > self.max_queue:
                raise InputError(503, "overloaded", "too many images waiting; retry shortly")
            for item in items:
                self._queue.put(item)
        if len(items) == 1:
            return [await items[0].future]
        return list(await asyncio.gather(*(item.future for item in items)))

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            assert isinstance(first, _Item)
            batch = [first]
            stopping = self._drain(batch)
            if not stopping and len(batch) < self.max_batch and self.max_wait > 0:
                # Sleep rather than block on the queue: a blocked worker is woken (a
                # syscall and a GIL hand-off) by every put, a sleeping one by none.
                time.sleep(max(0.0, first.enqueued + self.max_wait - time.perf_counter()))
                stopping = self._drain(batch)
            try:
                self._run_batch(batch)
            except Exception as exc:  # keep the worker alive; the requests get a 500
                log.exception("batch of %d failed", len(batch))
                self._complete(batch, [exc] * len(batch))

    def _drain(self, batch: list[_Item]) -> bool:
        """Move queued items into `batch` up to `max_batch`; True if the stop marker came."""
        while len(batch) < self.max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return False
            if nxt is _STOP:
                return True
            assert isinstance(nxt, _Item)
            batch.append(nxt)
        return False

    def _run_batch(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        self.metrics.queue_depth.set(self._queue.qsize())
        for item in batch:
            self.metrics.queue_seconds.observe(started - item.enqueued)
        results: list[object] = []
        pixels: list[np.ndarray] = []
        for item in batch:
            try:
                image = prepare(item.data, self.model.spec, self.max_pixels)
            except InputError as exc:
                results.append(exc)
                continue
            results.append(None)
            pixels.append(image)
        decoded = time.perf_counter()
        self.metrics.preprocess_seconds.observe(decoded - started)
        if pixels:
            probabilities = self.model.predict_batch(np.stack(pixels))
            self.metrics.inference_seconds.observe(time.perf_counter() - decoded)
            self.metrics.batch_size.observe(len(pixels))
            classes = probabilities.argmax(axis=1).tolist()
            self.drift.add(classes)
            rows = iter(range(len(pixels)))
            for i, result in enumerate(results):
                if result is None:
                    row = next(rows)
                    results[i] = probabilities[row]
                    self._predicted[classes[row]].inc()
        self._complete(batch, results)

    @staticmethod
    def _complete(batch: list[_Item], results: list[object]) -> None:
        # One wake-up per event loop per batch, not one per request.
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for item, result in zip(batch, results, strict=True):
            by_loop.setdefault(item.loop, []).append((item.future, result))
        for loop, pairs in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, pairs)
