"""ASGI middleware: upload limits enforced while the body streams, and access logs
with the HTTP metrics.

Both are plain ASGI (no `BaseHTTPMiddleware`), so they add microseconds, not a task
per request, and the limit applies before any of the body is buffered.
"""

from __future__ import annotations

import itertools
import json
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from prometheus_client import Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.images import byte_limit_reason, human_bytes

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
access_log = logging.getLogger("api_service.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Request ids: a random per-process prefix and a counter. uuid4() per request reads
# the OS random source each time, which costs a syscall on the event loop.
_ID_PREFIX = uuid.uuid4().hex[:12]
_ID_COUNTER = itertools.count(1)


def _next_id() -> str:
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


async def send_error(send: Send, status: int, code: str, message: str) -> None:
    """Send the service's JSON error body straight from middleware."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is not read: the connection cannot be reused.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class UploadGuardMiddleware:
    """413 for a body over the limit, 415 for an upload that is not multipart.

    `max_bytes` is a fixed limit, or a callable giving, per request, one file's limit
    and the setting it comes from (the served model's, which can change at a swap);
    the body may run `overhead` bytes past it for the multipart framing. A declared
    Content-Length over the limit is refused before reading anything (and one within
    it needs no counting: the body cannot run past it); a chunked body is counted as
    it arrives, and the request is cut off (the app sees a disconnect, its answer is
    dropped) the moment it passes the limit.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int | Callable[[], tuple[int, str]],
        multipart_paths: frozenset[str],
        overhead: int = 0,
    ) -> None:
        self.app = app
        self.limit = max_bytes if callable(max_bytes) else lambda: (max_bytes, "the body limit")
        self.multipart_paths = multipart_paths
        self.overhead = overhead

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length: int | None = None
        content_type = ""
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await send_error(send, 400, "bad_request", "invalid Content-Length")
                    return
            elif name == b"content-type":
                content_type = value.decode("latin-1").lower()
            elif name == b"transfer-encoding":
                chunked = True
        if scope["path"] in self.multipart_paths and not content_type.startswith(
            "multipart/form-data"
        ):
            await send_error(
                send,
                415,
                "unsupported_media_type",
                "send the image as multipart/form-data (a `file` field)",
            )
            return
        limit, setting = self.limit()
        max_bytes = limit + self.overhead
        if length is not None and length > max_bytes:
            await send_error(send, 413, "too_large", _too_large(length, limit, setting))
            return
        if length is not None and not chunked:
            # HTTP framing ends the body at Content-Length: nothing more to count.
            await self.app(scope, receive, send)
            return

        received = 0
        exceeded = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's answer to a cut-off body is replaced by the 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            shown = f"more than {human_bytes(received)}"
            await send_error(send, 413, "too_large", _too_large(shown, limit, setting))


def _too_large(size: int | str, limit: int, setting: str) -> str:
    """The refusal of a body over the limit, worded as the collector words a file's."""
    return f"upload {byte_limit_reason(size, limit, setting)}"


class AccessLogMiddleware:
    """Per request: a structured log record with a request id (echoed as X-Request-ID),
    the in-flight gauge, and the HTTP count and latency by route template.

    One layer does all three: each ASGI layer costs a coroutine per message, and
    the route template comes free from the scope once routing has run.
    """

    def __init__(
        self,
        app: ASGIApp,
        enabled: bool = True,
        in_flight: Gauge | None = None,
        record: Callable[[str, str, int, float], None] | None = None,
        unmeasured: frozenset[str] = frozenset(),
        guarded: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.enabled = enabled
        self.in_flight = in_flight
        self.record = record
        self.unmeasured = unmeasured
        self.guarded = guarded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                rid = candidate if _SAFE_ID.match(candidate) else None
                break
        rid = rid or _next_id()
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        if self.in_flight is not None:
            self.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            if self.in_flight is not None:
                self.in_flight.dec()
            path = scope["path"]
            if self.record is not None and path not in self.unmeasured:
                # Routing stored the matched route in the scope. A route the upload
                # guard answered before routing counts as itself; anything else is "none".
                route = scope.get("route")
                handler = route.path if route else path if path in self.guarded else "none"
                self.record(handler, scope["method"], status, seconds)
            if self.enabled:
                client = scope.get("client")
                access_log.info(
                    "%s %s %s",
                    scope["method"],
                    path,
                    status,
                    extra={
                        "request_id": rid,
                        "method": scope["method"],
                        "path": path,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                        "client": client[0] if client else None,
                    },
                )
            request_id.reset(token)


# Attributes every record has; the rest are `extra=` fields. uvicorn adds a coloured copy.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",
    "request_id",
}


class JsonFormatter(logging.Formatter):
    """Log records as one JSON object per line, with the request id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        entry.update(
            {k: v for k, v in vars(record).items() if k not in _STANDARD and v is not None}
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _RequestIdFilter(logging.Filter):
    """Stamp the request id on the record in the request's own context (see below)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class _LogWriter(threading.Thread):
    """Formats queued records and writes each burst with one write call.

    At thousands of requests a second, one write syscall per access record costs
    more than the record itself; a burst of records costs one. The thread wakes on
    a timer, not per record: each wake-up takes the GIL from the event loop, so it
    comes at most every `FLUSH_SECONDS` under load.
    """

    FLUSH_SECONDS = 0.05

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord | None]) -> None:
        super().__init__(name="log-writer", daemon=True)
        self.records = records
        self.formatter = JsonFormatter()
        self.stream = sys.stderr

    def run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self.records.get()]  # idle: sleep until there is something
            time.sleep(self.FLUSH_SECONDS)  # busy: let a burst gather
            while True:
                try:
                    batch.append(self.records.get_nowait())
                except queue.Empty:
                    break
            stopping = None in batch
            lines = [self.formatter.format(r) for r in batch if r is not None]
            if lines:
                try:
                    self.stream.write("\n".join(lines) + "\n")
                    self.stream.flush()
                except (OSError, ValueError):  # stderr closed: nothing left to tell
                    pass


_writer: tuple[_LogWriter, queue.SimpleQueue[logging.LogRecord | None]] | None = None


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the service and uvicorn's own loggers.

    Records go through a queue to a writer thread: formatting and the write syscall
    stay off the event loop, which logs one access record per request.
    """
    global _writer
    stop_logging()
    # The JSON lines carry none of the caller's file, thread or process: skip looking
    # them up for every record (the logging HOWTO's "Optimization" switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
    writer = _LogWriter(records)
    writer.start()
    _writer = (writer, records)
    to_queue = _PassThroughQueueHandler(records)
    to_queue.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [to_queue]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class _PassThroughQueueHandler(logging.handlers.QueueHandler):
    """Queue the record as it is; the writer thread's JsonFormatter does all formatting."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def stop_logging() -> None:
    """Write out what is queued and stop the writer (at exit)."""
    global _writer
    if _writer is not None:
        writer, records = _writer
        records.put(None)
        writer.join(timeout=5)
        _writer = None
