"""The service's log: JSON lines on stderr, formatted and written off the event loop.

The standard library's `QueueHandler` takes each record on the logging thread and a
`QueueListener` thread formats it (python-json-logger's orjson formatter) and writes
each burst of lines at once. One line:
`{"time", "level", "logger", "message", "request_id"?, <extra fields>…, "exception"?}`.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import signal
import sys
import threading
import time
from contextvars import ContextVar
from typing import Any, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

# The id of the request being served (set by the access-log middleware); log records
# made while it runs carry it.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def _stamp_request_id(record: logging.LogRecord) -> None:
    """Give the record the current request's id unless it names one itself."""
    if getattr(record, "request_id", None) is None:
        record.request_id = request_id.get()


class JsonFormatter(OrjsonFormatter):
    """One JSON object per record: time (UTC seconds), lower-case level, logger, message,
    the request id when there is one, every `extra=` field that is set, and the
    formatted exception.

    orjson rather than the standard library's encoder: an access record took about
    half the time to format (8 against 16 µs here), on a thread that shares the event
    loop's GIL.
    """

    converter = time.gmtime  # type: ignore[assignment]  # `time` in UTC, any host zone

    def __init__(self) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}",
            style="{",
            datefmt="%Y-%m-%dT%H:%M:%SZ",  # UTC (`converter`), said so by the Z
            rename_fields={
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "exc_info": "exception",
            },
            # uvicorn adds a coloured copy of its message.
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        _stamp_request_id(record)  # formatted on the caller's thread (tests, direct use)
        super().add_fields(log_data, record, message_dict)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        log_data["level"] = str(log_data["level"]).lower()
        return {key: value for key, value in log_data.items() if value is not None}


class _RequestIdFilter(logging.Filter):
    """Stamp the request id on the record in the request's own context: the listener
    thread that formats it later cannot see the context variable."""

    def filter(self, record: logging.LogRecord) -> bool:
        _stamp_request_id(record)
        return True


class _PassThroughQueueHandler(logging.handlers.QueueHandler):
    """Queue the record as it is: the stock `prepare` formats it on the caller's thread
    (the event loop), and the listener's formatter does that work instead."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _BurstHandler(logging.StreamHandler):
    """A stream handler that keeps formatted lines until `flush` writes them in one call.

    The listener flushes whenever it has emptied the queue: one write per burst of
    records instead of a write and a flush per record.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record) + self.terminator)
        except Exception:  # as StreamHandler does: report, keep logging
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self.lines:
                text, self.lines = "".join(self.lines), []
                self.stream.write(text)
            self.stream.flush()


class _BurstListener(logging.handlers.QueueListener):
    """A `QueueListener` that, once woken from an empty queue, lets a burst gather.

    At thousands of requests a second, waking the writer for every access record
    takes the GIL from the event loop each time (about a fifth of the throughput,
    docs/performance.md); waking at most every `GATHER_SECONDS` under load does not.
    """

    GATHER_SECONDS = 0.05

    def __init__(
        self, records: queue.SimpleQueue[logging.LogRecord], *handlers: logging.Handler
    ) -> None:
        super().__init__(records, *handlers)
        self.records = records

    def dequeue(self, block: bool) -> logging.LogRecord:
        try:
            return self.records.get_nowait()
        except queue.Empty:
            self.flush()  # the burst so far, before waiting for more
            record = self.records.get(block)  # idle: sleep until there is something
            time.sleep(self.GATHER_SECONDS)  # busy: let a burst gather
            return record

    def flush(self) -> None:
        for handler in self.handlers:
            handler.flush()

    def stop(self) -> None:
        """Handle what is queued, write it out, and end the thread."""
        super().stop()
        self.flush()


_listener: _BurstListener | None = None


def configure_logging(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send the service's and uvicorn's log records as JSON lines to `stream` (stderr).

    Formatting and the write syscall happen on the listener thread; `stop_logging`
    writes out what is queued (at exit).
    """
    global _listener
    stop_logging()
    # The JSON lines carry none of the caller's file, thread or process: skip looking
    # them up for every record (the logging HOWTO's "Optimization" switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    to_stderr = _BurstHandler(stream or sys.stderr)
    to_stderr.setFormatter(JsonFormatter())
    _listener = _BurstListener(records, to_stderr)
    _listener.start()
    to_queue = _PassThroughQueueHandler(records)
    to_queue.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [to_queue]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # What would bypass logging and print plain text on the same stream: warnings, and
    # exceptions nothing caught in a thread. (The inference process's output comes as
    # records too: api_service.worker.)
    logging.captureWarnings(True)  # records of the `py.warnings` logger
    threading.excepthook = _log_thread_exception


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """`threading.excepthook`: an uncaught exception in a thread, as an error record."""
    if args.exc_type is SystemExit:  # what the default hook ignores too
        return
    name = args.thread.name if args.thread is not None else "unknown"
    logging.getLogger("api_service").error(
        "uncaught exception in thread %s", name, exc_info=args.exc_value
    )


def write_out_at_sigterm() -> None:
    """Have SIGTERM write out the queued records before it ends the process.

    uvicorn handles SIGTERM while it serves, shuts down, then raises it again with the
    handler it found, and the default one ends the process at once: the shutdown's
    own records ("Application shutdown complete.", errors while stopping) were still
    queued and were lost. The handler installed here writes them out, then ends the
    process by SIGTERM as before. It is left alone if something else handles SIGTERM.
    """
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _write_out_and_end)


def _write_out_and_end(signum: int, _frame: object) -> None:
    stop_logging()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def stop_logging() -> None:
    """Write out what is queued and stop the listener thread; warnings and thread
    exceptions print as plain text again."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
        logging.captureWarnings(False)
        threading.excepthook = threading.__excepthook__
