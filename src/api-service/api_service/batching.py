"""Micro-batching: requests queue images; a thread hands them in batches to the inference process.

The event loop only enqueues bytes and awaits a future. The batcher thread sends
each batch to the model's inference process (`api_service.worker`), which decodes
and runs LiteRT with its own GIL, and waits for the answer without holding this
process's. So a saturated model never delays `/healthz`. A batch takes what is
queued, up to `max_batch` images; with `max_wait_ms` above 0 (0 by default) and room
left, it then waits until that long after its first image and takes what arrived
meanwhile. Whatever queues while a batch runs joins the next one at once, so batches
grow with load on their own.
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

from api_service.inputs import InputError
from api_service.model import ServedModel
from api_service.monitoring import DriftWindow, Metrics
from api_service.worker import InferenceWorker, WorkerError

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
    """A queue, a batcher thread and an inference process in front of one `ServedModel`."""

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
        """Start the inference process (WorkerError if the model fails to load), then the thread."""
        self.worker.start()
        self._thread.start()

    def close(self, timeout: float | None = 30) -> None:
        """Stop taking work, finish what is queued, then end the thread and the process."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            # A batch is stuck: stop its process; the thread then fails that batch.
            self.worker.kill()
        elif not self._thread.ident:
            self.worker.close()  # never started: the process is ours to end

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
        self.worker.close()  # this thread alone talks to the process

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
        try:
            results, decode_s, infer_s = self.worker.run([item.data for item in batch])
        except WorkerError as exc:
            # The next batch starts a new process (`run` does when there is none).
            log.error("inference process failed on a batch of %d: %s", len(batch), exc)
            self._complete(batch, [exc] * len(batch))
            return
        self.metrics.preprocess_seconds.observe(decode_s)
        rows = [result for result in results if not isinstance(result, InputError)]
        if rows:
            self.metrics.inference_seconds.observe(infer_s)
            self.metrics.batch_size.observe(len(rows))
            classes = np.argmax(rows, axis=1).tolist()
            self.drift.add(classes)
            for label in classes:
                self._predicted[label].inc()
        self._complete(batch, list(results))

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
