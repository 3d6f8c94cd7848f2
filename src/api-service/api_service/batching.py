"""Micro-batching: requests queue images; the event loop sends them in batches to inference.

The batch runs in the model's inference process (`api_service.worker`), which decodes
and runs LiteRT with its own GIL; the event loop sends it the raw uploads and awaits
the answer on the socket without blocking, so a saturated model never delays
`/healthz`. One batch runs at a time. It takes what is queued, up to `max_batch`
images; with `max_wait_ms` above 0 (0 by default) and room left, it first waits
until that long after its first image and takes what arrived meanwhile. Whatever
queues while a batch runs goes out in the next one the moment it returns, so
batches grow with load on their own.

Everything here runs on the event loop but `start` and `close`, which block (the
manager calls them from a thread). No thread of this process sits between the loop
and the inference process: each hop to one cost a GIL hand-off from the busy loop
(about 15 % of the throughput under load; docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field

import numpy as np

from api_service.inputs import InputError
from api_service.model import ServedModel
from api_service.monitoring import DriftWindow, Metrics
from api_service.worker import BatchResult, InferenceWorker, WorkerError

log = logging.getLogger("api_service.batching")


# How often `close` looks whether the event loop has finished the queue.
CLOSE_POLL_S = 0.005


class BatcherClosedError(RuntimeError):
    """The batcher was retired (its model was swapped out); use the current one."""


@dataclass
class _Item:
    data: bytes
    future: asyncio.Future[np.ndarray | InputError]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """A queue and an inference process in front of one `ServedModel`."""

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
        threads: int = 1,
    ) -> None:
        self.model = model
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self.max_queue = max_queue
        self.metrics = metrics
        self.worker = InferenceWorker(
            model, threads=threads, max_batch=self.max_batch, max_pixels=max_pixels
        )
        self.drift = DriftWindow(model.labels, model.training_counts, drift_window)
        self._queue: deque[_Item] = deque()
        self._running: asyncio.Task[None] | None = None  # the batch in the process
        self._timer: asyncio.TimerHandle | None = None  # the max_wait_ms wait
        self._closed = False
        self._predicted = {
            i: metrics.predictions.labels(model_version=model.version, label=label)
            for i, label in enumerate(model.labels)
        }

    def start(self) -> None:
        """Start the inference process (blocking; WorkerError if the model fails to load)."""
        self.worker.start()

    def close(self, timeout: float = 30) -> None:
        """Stop taking work, let the event loop finish what is queued, then end the
        process (blocking: call it from a thread, not the event loop). After `timeout`
        seconds the process is killed: what is left fails with 500s."""
        self._closed = True
        deadline = time.monotonic() + timeout
        while self._busy() and time.monotonic() < deadline:
            time.sleep(CLOSE_POLL_S)
        if self._busy():
            self.worker.kill()
        else:
            self.worker.close()

    def _busy(self) -> bool:
        return bool(self._queue) or self._running is not None or self._timer is not None

    async def predict_many(self, images: list[bytes]) -> list[np.ndarray | InputError]:
        """Probabilities for each image (or the `InputError` that refused it).

        Raises BatcherClosedError once `close` was called, InputError 503 when the
        queue already holds `max_queue` images.
        """
        if self._closed:
            raise BatcherClosedError
        if len(self._queue) + len(images) > self.max_queue:
            raise InputError(503, "overloaded", "too many images waiting; retry shortly")
        loop = asyncio.get_running_loop()
        items = [_Item(data, loop.create_future()) for data in images]
        self._queue.extend(items)
        self._dispatch()
        if len(items) == 1:
            return [await items[0].future]
        return list(await asyncio.gather(*(item.future for item in items)))

    def _dispatch(self, waited: bool = False) -> None:
        """Start a batch of what is queued, unless one runs or the wait for more is on."""
        if self._running is not None or not self._queue or (self._timer and not waited):
            return
        self._timer = None
        loop = asyncio.get_running_loop()
        if not waited and self.max_wait > 0 and len(self._queue) < self.max_batch:
            delay = self._queue[0].enqueued + self.max_wait - time.perf_counter()
            if delay > 0:
                self._timer = loop.call_later(delay, self._dispatch, True)
                return
        batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        started = time.perf_counter()
        self.metrics.queue_depth.set(len(self._queue))
        for item in batch:
            self.metrics.queue_seconds.observe(started - item.enqueued)
        result = self.worker.submit([item.data for item in batch])
        self._running = loop.create_task(self._run(batch, result))

    async def _run(self, batch: list[_Item], result: Awaitable[BatchResult]) -> None:
        results: Sequence[object]
        try:
            results, decode_s, infer_s = await result
        except WorkerError as exc:
            # The next batch starts a new process (`InferenceWorker.submit` does).
            log.error("inference process failed on a batch of %d: %s", len(batch), exc)
            results = [exc] * len(batch)
        except Exception as exc:  # the requests get a 500; the next batch goes on
            log.exception("batch of %d failed", len(batch))
            results = [exc] * len(batch)
        else:
            self._record(results, decode_s, infer_s)
        finally:
            self._running = None  # also when cancelled: the loop is closing
        self._complete(batch, results)
        self._dispatch()  # what queued meanwhile

    def _record(
        self, results: list[np.ndarray | InputError], decode_s: float, infer_s: float
    ) -> None:
        """The batch's timings, size and predicted classes into the metrics and the drift window."""
        self.metrics.preprocess_seconds.observe(decode_s)
        rows = [result for result in results if not isinstance(result, InputError)]
        if rows:
            self.metrics.inference_seconds.observe(infer_s)
            self.metrics.batch_size.observe(len(rows))
            classes = np.argmax(rows, axis=1).tolist()
            self.drift.add(classes)
            for label in classes:
                self._predicted[label].inc()

    @staticmethod
    def _complete(batch: list[_Item], results: Sequence[object]) -> None:
        """Answer the batch's requests that are still waiting (a client that went away
        cancelled its own)."""
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException) and not isinstance(result, InputError):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)  # type: ignore[arg-type]
