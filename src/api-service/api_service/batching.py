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
import contextvars
import logging
import threading
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
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop that queues
        self._closed = False
        self._drained = threading.Event()  # closed, and nothing left to run
        # Orders close() on another thread against a loop taking the batcher up (its
        # first request): either the loop is known to close(), or it sees `_closed`.
        self._handover = threading.Lock()
        self._predicted = {
            i: metrics.predictions.labels(model_version=model.version, label=label)
            for i, label in enumerate(model.labels)
        }

    def start(self) -> None:
        """Start the inference process (blocking; WorkerError if the model fails to load).

        From then on the queue-depth gauge reads this batcher's queue, at each scrape.
        """
        self.worker.start()
        self.metrics.queue_depth.set_function(self._queue.__len__)

    def close(self, timeout: float = 30) -> None:
        """Stop taking work, let the event loop finish what is queued, then end the
        process (blocking: call it from a thread, not the event loop). After `timeout`
        seconds the process is killed: what is left fails with 500s."""
        with self._handover:
            loop = self._loop
            try:
                if loop is None or not loop.is_running():
                    raise RuntimeError("no loop runs the queue")
                # On the loop, so no request is queued between the check and the close.
                loop.call_soon_threadsafe(self._close_on_loop)
            except RuntimeError:  # nothing runs the queue: nothing can be answered
                self._closed = True
                self._drained.set()
        if self._drained.wait(timeout):
            self.worker.close()
        else:
            self.worker.kill()

    def _close_on_loop(self) -> None:
        self._closed = True
        self._if_drained()

    def _if_drained(self) -> None:
        if self._closed and not (self._queue or self._running or self._timer):
            self._drained.set()

    async def predict_many(self, images: list[bytes]) -> list[np.ndarray | InputError]:
        """Probabilities for each image (or the `InputError` that refused it).

        Raises BatcherClosedError once `close` was called, InputError 503 when the
        queue already holds `max_queue` images.
        """
        if self._closed:
            raise BatcherClosedError
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            with self._handover:
                if self._closed:
                    raise BatcherClosedError
                self._follow(loop)
        if len(self._queue) + len(images) > self.max_queue:
            raise InputError(503, "overloaded", "too many images waiting; retry shortly")
        items = [_Item(data, loop.create_future()) for data in images]
        self._queue.extend(items)
        self._dispatch()
        if len(items) == 1:
            return [await items[0].future]
        return list(await asyncio.gather(*(item.future for item in items)))

    def _follow(self, loop: asyncio.AbstractEventLoop) -> None:
        """Queue on `loop` from now on. A server has one loop; tests run one after
        another, and what an ended loop left (its requests, its timer, its batch's
        task) can never run: it is dropped. RuntimeError while another loop runs."""
        if self._loop is not None and self._loop.is_running():
            raise RuntimeError("a batcher serves one running event loop at a time")
        self._loop = loop
        self._queue.clear()
        self._timer = None
        self._running = None

    def _dispatch(self, waited: bool = False) -> None:
        """Start a batch of what is queued, unless one runs or the wait for more is on."""
        if waited:
            self._timer = None
        if self._running is not None or not self._queue or self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        # Batches run in a context of their own: not the request's that happened to
        # start them (its request id would label every batch's log lines).
        context = contextvars.Context()
        if not waited and self.max_wait > 0 and len(self._queue) < self.max_batch:
            delay = self._queue[0].enqueued + self.max_wait - time.perf_counter()
            if delay > 0:
                self._timer = loop.call_later(delay, self._dispatch, True, context=context)
                return
        batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        started = time.perf_counter()
        for item in batch:
            self.metrics.queue_seconds.observe(started - item.enqueued)
        try:
            result = self.worker.submit([item.data for item in batch])
            self._running = loop.create_task(self._run(batch, result), context=context)
        except Exception as exc:  # the batch's requests get a 500, not a wait forever
            log.exception("batch of %d could not be sent", len(batch))
            self._complete(batch, [exc] * len(batch))

    async def _run(self, batch: list[_Item], result: Awaitable[BatchResult]) -> None:
        results: Sequence[object]
        try:
            results, decode_s, infer_s = await result
            if len(results) != len(batch):
                raise WorkerError(f"{len(results)} results for a batch of {len(batch)}")
            self._record(results, decode_s, infer_s)
        except WorkerError as exc:
            # The next batch starts a new process (`InferenceWorker.submit` does).
            log.error("inference process failed on a batch of %d: %s", len(batch), exc)
            results = [exc] * len(batch)
        except Exception as exc:  # the requests get a 500; the next batch goes on
            log.exception("batch of %d failed", len(batch))
            results = [exc] * len(batch)
        finally:
            self._running = None  # also when cancelled: the loop is closing
        self._complete(batch, results)
        self._dispatch()  # what queued meanwhile
        self._if_drained()

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
