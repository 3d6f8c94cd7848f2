"""The service's log: JSON lines on stderr, written off the event loop.

The standard library's `QueueHandler` takes each record on the logging thread and a
`QueueListener` thread formats it (python-json-logger's orjson formatter) and writes
each burst of lines at once. One line:
`{"time", "level", "logger", "message", "request_id"?, <extra fields>…, "exception"?}`.
The access line, one per request, skips the `LogRecord`: `log_access` encodes it on
the caller's thread and queues the text for the same listener.
"""

from __future__ import annotations

import functools
import json
import logging
import logging.handlers
import queue
import signal
import sys
import threading
import time
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
from pythonjsonlogger.core import RESERVED_ATTRS, BaseJsonFormatter
from pythonjsonlogger.json import JsonEncoder as StdlibJsonEncoder
from pythonjsonlogger.orjson import OrjsonFormatter

ACCESS_LOGGER = "api_service.access"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# The line's names for the record's standard attributes.
_RENAMED = {"asctime": "time", "levelname": "level", "name": "logger", "exc_info": "exception"}
_TIME_KEY, _LEVEL_KEY, _LOGGER_KEY = (_RENAMED[key] for key in ("asctime", "levelname", "name"))
_access = logging.getLogger(ACCESS_LOGGER)

# The id of the request being served (set by the access-log middleware); log records
# made while it runs carry it.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def _stamp_request_id(record: logging.LogRecord) -> None:
    """Give the record the current request's id unless it names one itself."""
    if getattr(record, "request_id", None) is None:
        record.request_id = request_id.get()


class ServiceFields(BaseJsonFormatter):
    """The fields of the service's JSON lines: time (UTC seconds), lower-case level,
    logger, message, the request id when there is one, every `extra=` field that is set,
    and the formatted exception. Mixed into an encoder's formatter (`JsonFormatter`)."""

    converter = time.gmtime  # type: ignore[assignment]  # `time` in UTC, any host zone

    def __init__(self) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}",
            style="{",
            datefmt=_TIME_FORMAT,  # UTC (`converter`), said so by the Z
            rename_fields=dict(_RENAMED),
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


class JsonFormatter(ServiceFields, OrjsonFormatter):
    """`ServiceFields` encoded by orjson: an access record took about half as long to
    format as with the standard library's encoder (8 against 16 µs here), on a thread
    that shares the event loop's GIL.

    Values orjson does not know are written as strings (a NumPy scalar, a path), NaN
    and infinities as null. What orjson refuses (an integer of 64 bits or more, a lone
    surrogate in a string) goes through the standard library's encoder instead of
    losing the record.
    """

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        try:
            return super().jsonify_log_record(log_data)
        except orjson.JSONEncodeError:  # python-json-logger's encoder for the stdlib one
            return json.dumps(log_data, cls=StdlibJsonEncoder)


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

    # Written at once past this many held lines: under logging faster than the listener
    # formats, its queue never runs empty, and lines must not wait for that.
    MAX_HELD_LINES = 1000

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # as StreamHandler does: report, keep logging
            self.handleError(record)
            return
        self.hold(line)

    def hold(self, line: str) -> None:
        """Keep a formatted line (no terminator) for the next write."""
        self.lines.append(line + self.terminator)
        if len(self.lines) >= self.MAX_HELD_LINES:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            text, self.lines = "".join(self.lines), []
            try:
                if text:
                    self.stream.write(text)
                self.stream.flush()
            except Exception:  # a broken pipe, a full disk: report, keep the listener alive
                self.handleError(_WRITE_FAILED)


# What `handleError` reports when a burst could not be written (the lines are dropped).
_WRITE_FAILED = logging.makeLogRecord({"msg": "could not write log lines to the stream"})


class _BurstListener(logging.handlers.QueueListener):
    """A `QueueListener` that, once woken from an empty queue, lets a burst gather.

    At thousands of requests a second, waking the writer for every access record
    takes the GIL from the event loop each time (about a fifth of the throughput,
    docs/performance.md); waking at most every `GATHER_SECONDS` under load does not.
    """

    GATHER_SECONDS = 0.05

    def __init__(
        self, records: queue.SimpleQueue[logging.LogRecord | str], *handlers: _BurstHandler
    ) -> None:
        super().__init__(records, *handlers)
        self.records = records
        # The handler that queues the service's records here (set by configure_logging).
        self.entry: logging.Handler | None = None
        # The handlers and their formatters as made, to tell whether someone changed them.
        self.own_handlers = self.handlers
        self.formatters = tuple(handler.formatter for handler in handlers)

    def handle(self, record: logging.LogRecord | str) -> None:
        """A record goes to the handlers; a line (from `log_access`) is held as it is."""
        if not isinstance(record, str):
            super().handle(record)
            return
        for handler in self.handlers:
            if isinstance(handler, _BurstHandler):
                with handler.lock:  # type: ignore[union-attr]  # as a record's emit runs
                    handler.hold(record)

    # The queue holds lines as well as records (see `handle`).
    def dequeue(self, block: bool) -> logging.LogRecord | str:  # type: ignore[override]
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
    records: queue.SimpleQueue[logging.LogRecord | str] = queue.SimpleQueue()
    to_stderr = _BurstHandler(stream or sys.stderr)
    to_stderr.setFormatter(JsonFormatter())
    _listener = _BurstListener(records, to_stderr)
    _listener.start()
    to_queue = _PassThroughQueueHandler(records)
    to_queue.addFilter(_RequestIdFilter())
    _listener.entry = to_queue
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


def log_access(message: str, fields: dict[str, Any]) -> None:
    """The access line of a request: an INFO entry of the `api_service.access` logger,
    `message` with `fields` (`extra=` fields, JSON values, in the line's order; a None
    value is left out; `request_id`, when not given, is the current request's).

    While the line would meet nothing of `logging`'s but what `configure_logging` set
    up (`_ours_alone`), it is made here with orjson, as `JsonFormatter` would make it
    from the record, and queued for the listener as text. A `LogRecord` cost the event
    loop about 9 µs and its formatting the listener thread about 15 µs, both under the
    event loop's GIL: at 3,000 requests a second the access log took a fifth of the
    throughput (docs/performance.md). Otherwise (an app made by `create_app` alone,
    tests, a handler or filter someone added) it is an ordinary record of that logger.
    """
    listener = _listener
    if listener is None or not _access.isEnabledFor(logging.INFO) or not _ours_alone(listener):
        _access.info(message, extra=fields)  # nothing logged when not enabled
        return
    line = {
        _TIME_KEY: _utc_stamp(int(time.time())),
        _LEVEL_KEY: "info",  # ServiceFields writes levels in lower case
        _LOGGER_KEY: ACCESS_LOGGER,
        "message": message,
        **fields,
    }
    if line.get("request_id") is None:
        line["request_id"] = request_id.get()  # where _RequestIdFilter puts it: in place or last
    if None in line.values():  # a scan in C; the copy only when there is something to drop
        line = {key: value for key, value in line.items() if value is not None}
    try:
        text = orjson.dumps(line)
    except orjson.JSONEncodeError:  # a value orjson refuses: the record's way round it
        _access.info(message, extra=fields)
        return
    listener.records.put(text.decode())


def _ours_alone(listener: _BurstListener) -> bool:
    """Whether an access record would meet only what `configure_logging` set up: the
    default record factory, no handler, filter or `propagate = False` on the access
    logger, no handler on the loggers above it (their filters never see a child's
    records), and at the root the listener's entry handler alone, with its one filter,
    its level and the listener's handlers as they were. Checked per line (under 1 µs),
    as logging can be configured at any time."""
    if logging.getLogRecordFactory() is not logging.LogRecord or _access.filters:
        return False
    logger: logging.Logger | None = _access
    root = logging.root
    while logger is not None and logger is not root:
        if logger.handlers or not logger.propagate:
            return False
        logger = logger.parent
    entry = listener.entry
    if len(root.handlers) != 1 or root.handlers[0] is not entry or entry is None:
        return False
    if len(entry.filters) != 1 or entry.level > logging.INFO:
        return False
    if listener.handlers is not listener.own_handlers:
        return False
    for handler, formatter in zip(listener.handlers, listener.formatters, strict=True):
        if handler.filters or handler.formatter is not formatter:
            return False
    return True


@functools.lru_cache(maxsize=1)
def _utc_stamp(second: int) -> str:
    """`time` as `ServiceFields` writes it, for a time in whole seconds since the epoch."""
    return time.strftime(_TIME_FORMAT, time.gmtime(second))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """`threading.excepthook`: an uncaught exception in a thread, as an error record."""
    if args.exc_type is SystemExit:  # what the default hook ignores too
        return
    listener = _listener
    if listener is None or args.thread is listener._thread:
        threading.__excepthook__(args)  # the listener itself failed: its queue is dead
        return
    name = args.thread.name if args.thread is not None else "unknown"
    logging.getLogger("api_service").error(
        "uncaught exception in thread %s", name, exc_info=args.exc_value
    )


def exit_at_sigterm() -> None:
    """Have SIGTERM end the process by `SystemExit(143)`, so `finally` blocks run (the
    caller's `stop_logging`, which writes out the queued records).

    uvicorn handles SIGTERM while it serves, shuts down, then raises it again with the
    handler it found. With the default one the process ended there, before the
    caller's `finally`, and the shutdown's records ("Application shutdown complete.",
    errors while stopping) were still queued and lost. 143 is the status a shell shows
    for a process ended by SIGTERM; as a container's PID 1, which ignores a re-raised
    SIGTERM, the server used to exit 0. `stop_logging` puts the default handler back,
    so a SIGTERM while it writes out ends the process. Left alone if something else
    handles SIGTERM.
    """
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_143)


def _exit_143(signum: int, _frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)
    raise SystemExit(128 + signum)


def stop_logging() -> None:
    """Write out what is queued and stop the listener thread; warnings and thread
    exceptions print as plain text again."""
    global _listener
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread and signal.getsignal(signal.SIGTERM) is _exit_143:
        # Not SystemExit inside the join below: a SIGTERM now ends the process.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    listener, _listener = _listener, None  # taken first: a second call finds none
    if listener is not None:
        listener.stop()
        logging.captureWarnings(False)
        threading.excepthook = threading.__excepthook__
