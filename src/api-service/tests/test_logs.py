"""The service's log pipeline as `serve` configures it: records queued on the caller's
thread, formatted and written by the listener thread, and written out at SIGTERM."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send
from support import RunningApi

from api_service.logs import configure_logging, stop_logging
from common.registry import ModelRegistry


class CountingStream(io.StringIO):
    """stderr that counts the writes reaching it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def stderr() -> Iterator[CountingStream]:
    """A stream for `configure_logging`; the logging set-up is restored after the test."""
    stream = CountingStream()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    switches = {n: getattr(logging, n) for n in ("_srcfile", "logThreads", "logProcesses")}
    switches["logMultiprocessing"] = logging.logMultiprocessing
    uvicorn = {n: logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "uvicorn.access")}
    uvicorn_saved = {n: (lg.handlers[:], lg.propagate) for n, lg in uvicorn.items()}
    try:
        yield stream
    finally:
        stop_logging()
        root.handlers[:], level = saved
        root.setLevel(level)
        for name, value in switches.items():
            setattr(logging, name, value)
        for name, lg in uvicorn.items():
            lg.handlers[:], lg.propagate = uvicorn_saved[name]


def test_a_burst_of_records_is_written_whole_in_a_few_writes(stderr: CountingStream) -> None:
    """Each line is JSON and none is lost at `stop_logging`; a burst reaches stderr in
    one write, not a write per record (the listener writes when its queue runs empty)."""
    configure_logging(stream=stderr)
    access = logging.getLogger("api_service.access")
    for i in range(200):
        access.info("POST /v1/predict %s", 200, extra={"request_id": f"r-{i}", "status": 200})
    stop_logging()
    lines = stderr.getvalue().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [f"r-{i}" for i in range(200)]
    assert json.loads(lines[0])["message"] == "POST /v1/predict 200"
    assert stderr.writes <= 5, f"{stderr.writes} writes for 200 records"


def test_warnings_and_uncaught_thread_exceptions_are_records_too(
    stderr: CountingStream,
) -> None:
    """Both would otherwise print plain text in the middle of the JSON lines."""
    configure_logging(stream=stderr)
    warnings.warn("an old argument", DeprecationWarning, stacklevel=1)

    def fail() -> None:
        raise RuntimeError("boom")

    thread = threading.Thread(target=fail, name="doomed")
    thread.start()
    thread.join()
    stop_logging()
    records = [json.loads(line) for line in stderr.getvalue().splitlines()]
    assert [(r["logger"], r["level"]) for r in records] == [
        ("py.warnings", "warning"),
        ("api_service", "error"),
    ]
    assert "DeprecationWarning: an old argument" in records[0]["message"]
    assert records[1]["message"] == "uncaught exception in thread doomed"
    assert "RuntimeError: boom" in records[1]["exception"]
    assert threading.excepthook is threading.__excepthook__  # restored by stop_logging


def test_a_record_that_cannot_be_formatted_does_not_stop_the_others(
    stderr: CountingStream,
) -> None:
    """Its error is reported (logging's own report) and the records around it are written."""
    configure_logging(stream=stderr)
    log = logging.getLogger("api_service.test")
    log.info("before")
    log.info("%d", "not a number")  # formatting the message fails on the listener
    log.info("after")
    stop_logging()
    messages = [json.loads(line)["message"] for line in stderr.getvalue().splitlines()]
    assert messages[0] == "before" and messages[-1] == "after"


@pytest.mark.integration
def test_sigterm_ends_the_server_after_its_last_records_are_written(
    registry_copy: ModelRegistry, start_server: Callable[..., RunningApi], tmp_path: Path
) -> None:
    """uvicorn re-raises the SIGTERM that stopped it once it has shut down; the records
    of the shutdown itself were still queued then, and were lost."""
    server = start_server(Path(registry_copy.root), model_poll_seconds=0)
    assert server.process is not None
    server.stop()  # SIGTERM, then wait
    assert server.process.returncode == 128 + signal.SIGTERM  # as a shell shows SIGTERM's end
    lines = (tmp_path / "server-1.log").read_text().splitlines()
    # Every line is a record, the inference process's own output (LiteRT's) included.
    messages = [json.loads(line)["message"] for line in lines]
    assert "Application shutdown complete." in messages
    assert messages[-1].startswith("Finished server process")


def test_the_inference_process_stderr_becomes_records_a_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from api_service.worker import _forward_stderr

    read, write = os.pipe()
    os.write(write, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n\n")
    os.write(write, b"ERROR: Didn't find op for builtin opcode 'X'\nWARNING: slow\n")
    os.write(write, b"Traceback (most recent call last):\n  50% done \xff\nNOTE: x\n")
    os.close(write)
    with caplog.at_level(logging.INFO, logger="api_service.worker"):
        _forward_stderr(os.fdopen(read, "rb"), "3")
    got = [(r.levelname, r.getMessage(), r.model_version) for r in caplog.records]  # type: ignore[attr-defined]
    # The level once showed twice: "level": "info", "message": "INFO: Created …".
    assert got == [
        ("INFO", "Created TensorFlow Lite XNNPACK delegate for CPU.", "3"),
        ("ERROR", "Didn't find op for builtin opcode 'X'", "3"),
        ("WARNING", "slow", "3"),
        ("WARNING", "Traceback (most recent call last):", "3"),
        ("WARNING", "  50% done \ufffd", "3"),
        ("WARNING", "NOTE: x", "3"),
    ]


class FailingOnce(CountingStream):
    """A stream whose first write fails (a broken pipe, a full disk)."""

    def write(self, text: str) -> int:
        if self.writes == 0:
            self.writes += 1
            raise OSError("no space left on device")
        return super().write(text)


def test_a_failed_write_loses_its_lines_but_not_the_log(stderr: CountingStream) -> None:
    """The listener survives the error (reported by logging) and writes what comes next."""
    failing = FailingOnce()
    configure_logging(stream=failing)
    log = logging.getLogger("api_service.test")
    log.info("lost")
    deadline = time.monotonic() + 5
    while failing.writes == 0 and time.monotonic() < deadline:  # the failed write happened
        time.sleep(0.01)
    log.info("kept")
    stop_logging()
    assert [json.loads(line)["message"] for line in failing.getvalue().splitlines()] == ["kept"]


def test_lines_reach_the_stream_while_logging_goes_on(stderr: CountingStream) -> None:
    """Written once the queue runs empty (about 50 ms), not only at stop."""
    configure_logging(stream=stderr)
    logging.getLogger("api_service.test").info("soon")
    deadline = time.monotonic() + 5
    while "soon" not in stderr.getvalue():
        assert time.monotonic() < deadline, "nothing written before stop_logging"
        time.sleep(0.01)


def test_held_lines_are_written_past_a_cap_even_if_the_queue_never_empties(
    stderr: CountingStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api_service.logs import _BurstHandler

    monkeypatch.setattr(_BurstHandler, "MAX_HELD_LINES", 10)
    configure_logging(stream=stderr)
    for i in range(100):  # all queued while the listener lets the burst gather
        logging.getLogger("api_service.test").info("line %d", i)
    stop_logging()
    assert len(stderr.getvalue().splitlines()) == 100
    assert stderr.writes >= 10


ACCESS_FIELDS: list[dict[str, object]] = [
    {"request_id": "ca3e97ae70a0-4004", "method": "POST", "path": "/v1/predict",
     "status": 200, "duration_ms": 11.374, "client": "127.0.0.1"},
    {"request_id": "r-2", "method": "GET", "path": '/caf\u00e9/"100% \\x"\u2028',
     "status": 404, "duration_ms": 1e-05, "client": None},  # no client: no "client" key
    {"method": "GET", "path": "/healthz", "status": 200, "duration_ms": 0.0},  # no id given
]  # fmt: skip
_TIME = re.compile(r'"time":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"')


@pytest.fixture
def india_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The host's zone is UTC+05:30, so a local time stamp cannot pass for UTC."""
    monkeypatch.setenv("TZ", "IST-05:30")  # POSIX form: needs no zone data
    time.tzset()
    assert time.localtime().tm_gmtoff == 19_800
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("fields", ACCESS_FIELDS)
@pytest.mark.usefixtures("india_time")
def test_an_access_line_is_the_line_its_record_makes(
    stderr: CountingStream, fields: dict[str, object]
) -> None:
    """`log_access` encodes the line itself; it must be, byte for byte but the second,
    the line the middleware's record (`logger.info` with `extra=`) gives."""
    from api_service.logs import ACCESS_LOGGER, log_access, request_id

    message = f"{fields['method']} {fields['path']} {fields['status']}"
    token = request_id.set("from-context")
    try:
        configure_logging(stream=stderr)
        before = time.time()
        logging.getLogger(ACCESS_LOGGER).info(message, extra=fields)
        log_access(message, fields)
        after = time.time()
        stop_logging()
    finally:
        request_id.reset(token)
    # "\n" only: a U+2028 in the path is a line break to str.splitlines, not in JSON lines.
    record_line, line = stderr.getvalue().removesuffix("\n").split("\n")
    assert _TIME.sub('"time":""', line) == _TIME.sub('"time":""', record_line)
    match = _TIME.search(line)
    assert match is not None
    written = datetime.datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%SZ")
    assert int(before) <= written.replace(tzinfo=datetime.UTC).timestamp() <= after


class Seen(logging.Handler):
    """A handler, or a filter (`seen`, `drop`), that notes each record's message."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def seen(self, record: logging.LogRecord) -> bool:
        self.emit(record)
        return True

    def drop(self, record: logging.LogRecord) -> bool:
        self.emit(record)
        return False


Setup = Callable[[pytest.MonkeyPatch, logging.Logger, Seen, logging.Handler, logging.Handler], None]
MESSAGE = "GET /healthz 200"
PARENT = logging.getLogger("api_service")
ROUTES: list[tuple[str, Setup, list[str], list[str]]] = [
    # id, setup(monkeypatch, access logger, seen, entry handler, stream handler),
    # what `Seen` sees, the messages on stderr
    ("handler", lambda mp, log, seen, e, o: mp.setattr(log, "handlers", [seen]),
     [MESSAGE], [MESSAGE]),
    ("parent-handler", lambda mp, log, seen, e, o: mp.setattr(PARENT, "handlers", [seen]),
     [MESSAGE], [MESSAGE]),
    ("root-handler", lambda mp, log, seen, e, o: mp.setattr(logging.root, "handlers", [e, seen]),
     [MESSAGE], [MESSAGE]),
    ("filter", lambda mp, log, seen, e, o: mp.setattr(log, "filters", [seen.seen]),
     [MESSAGE], [MESSAGE]),
    ("propagate-false-handler",
     lambda mp, log, seen, e, o: (
         mp.setattr(log, "handlers", [seen]), mp.setattr(log, "propagate", False)),
     [MESSAGE], []),
    ("propagate-false", lambda mp, log, seen, e, o: mp.setattr(log, "propagate", False),
     [], []),
    ("entry-filter", lambda mp, log, seen, e, o: mp.setattr(e, "filters", [*e.filters, seen.drop]),
     [MESSAGE], []),
    ("entry-level", lambda mp, log, seen, e, o: mp.setattr(e, "level", logging.WARNING),
     [], []),
    ("stream-filter", lambda mp, log, seen, e, o: mp.setattr(o, "filters", [seen.drop]),
     [MESSAGE], []),
    ("stream-formatter",
     lambda mp, log, seen, e, o: mp.setattr(o, "formatter", logging.Formatter("%(message)s")),
     [], [MESSAGE]),
    ("parent-filter",  # never applied to a child's records: the line is written
     lambda mp, log, seen, e, o: mp.setattr(PARENT, "filters", [seen.drop]),
     [], [MESSAGE]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "seen_expected", "written"),
    [pytest.param(*case[1:], id=case[0]) for case in ROUTES],
)
def test_access_records_go_where_logging_is_configured_to_send_them(
    stderr: CountingStream,
    monkeypatch: pytest.MonkeyPatch,
    setup: Setup,
    seen_expected: list[str],
    written: list[str],
) -> None:
    """Whatever someone adds to `logging` (caplog, a file, an error tracker, a filter
    to drop probes, another format) sees each access record and acts on it, exactly
    as on a record: the line is then its record."""
    from api_service import logs

    configure_logging(stream=stderr)
    assert logs._listener is not None and logs._listener.entry is not None
    seen = Seen()
    with monkeypatch.context() as patch:
        entry, out = logs._listener.entry, logs._listener.handlers[0]
        setup(patch, logging.getLogger(logs.ACCESS_LOGGER), seen, entry, out)
        logs.log_access(MESSAGE, {"request_id": "r-1", "status": 200})
        stop_logging()
    lines = stderr.getvalue().splitlines()
    assert [line if line[0] != "{" else json.loads(line)["message"] for line in lines] == written
    assert seen.messages == seen_expected


def test_a_record_factory_still_shapes_the_access_line(stderr: CountingStream) -> None:
    """A record factory (OpenTelemetry's adds trace ids) applies to the access line too."""
    from api_service.logs import log_access

    make = logging.getLogRecordFactory()

    def traced(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.trace_id = "abc"
        return record

    configure_logging(stream=stderr)
    logging.setLogRecordFactory(traced)
    try:
        log_access(MESSAGE, {"request_id": "r-1", "status": 200})
    finally:
        logging.setLogRecordFactory(make)
    stop_logging()
    (line,) = stderr.getvalue().splitlines()
    assert json.loads(line)["trace_id"] == "abc"


def test_the_access_line_skips_the_log_record_and_keeps_its_place(
    stderr: CountingStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the service's log running, the middleware's access line costs no
    `LogRecord` (about 9 µs on the event loop and 15 on the listener, a fifth of the
    throughput); it comes after the request's own records, with their request id."""
    from api_service.access_log import AccessLogMiddleware

    made: list[str] = []
    make_record = logging.Logger.makeRecord

    def counting(self: logging.Logger, name: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        made.append(name)
        return make_record(self, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(logging.Logger, "makeRecord", counting)

    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        logging.getLogger("api_service").info("inside")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def request() -> None:
        scope = {"type": "http", "method": "GET", "path": "/healthz", "headers": []}
        await AccessLogMiddleware(ok)(scope, receive_nothing, send_nowhere)

    configure_logging(stream=stderr)
    asyncio.run(request())
    stop_logging()
    assert made == ["api_service"]  # "inside"; the access line made none
    lines = [json.loads(line) for line in stderr.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["inside", "GET /healthz 200"]
    assert lines[0]["request_id"] == lines[1]["request_id"]


async def receive_nothing() -> Message:
    return {"type": "http.disconnect"}


async def send_nowhere(message: Message) -> None:
    pass


def test_access_lines_follow_the_access_loggers_level(stderr: CountingStream) -> None:
    """`api_service.access` set above INFO silences the access log, as it did records."""
    from api_service.logs import log_access

    access = logging.getLogger("api_service.access")
    configure_logging(stream=stderr)
    access.setLevel(logging.WARNING)
    try:
        log_access("GET /healthz 200", {"request_id": "r-1", "status": 200})
    finally:
        access.setLevel(logging.NOTSET)
    log_access("GET /readyz 200", {"request_id": "r-2", "status": 200})
    stop_logging()
    lines = [json.loads(line) for line in stderr.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == ["r-2"]


def test_an_access_line_orjson_refuses_goes_the_records_way(stderr: CountingStream) -> None:
    """A path orjson cannot encode (a lone surrogate) is still written, not lost."""
    from api_service.logs import log_access

    configure_logging(stream=stderr)
    log_access("GET /\udcff 404", {"request_id": "r-1", "path": "/\udcff", "status": 404})
    stop_logging()
    (line,) = stderr.getvalue().splitlines()
    values = json.loads(line)
    assert values["path"] == "/\udcff" and values["logger"] == "api_service.access"


def test_what_orjson_refuses_is_written_by_the_standard_encoder() -> None:
    from api_service.logs import JsonFormatter

    record = logging.LogRecord("api_service.test", logging.INFO, "", 0, "odd values", (), None)
    record.big = 2**70  # an `extra=` field orjson cannot encode
    record.name_bytes = "photo-\udcff.png"  # a file name decoded with surrogateescape
    record.when = datetime.datetime(2026, 12, 2, 4, 5, 6)  # written as orjson would
    line = JsonFormatter().format(record)
    values = json.loads(line)
    assert values["big"] == 2**70 and values["name_bytes"] == "photo-\udcff.png"
    assert values["when"] == "2026-12-02T04:05:06"
    assert values["message"] == "odd values" and values["level"] == "info"


def test_stop_logging_gives_sigterm_its_default_back(stderr: CountingStream) -> None:
    """A SIGTERM while the log is written out ends the process, instead of raising
    SystemExit inside that write-out (after Ctrl-C, say)."""
    from api_service.logs import exit_at_sigterm

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        configure_logging(stream=stderr)
        exit_at_sigterm()
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        stop_logging()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/v1/predict", "/v1/predict/batch"])
def test_a_client_gone_mid_upload_is_a_499_not_a_server_error(
    path: str,
    registry_copy: ModelRegistry,
    start_server: Callable[..., RunningApi],
    tmp_path: Path,
) -> None:
    """Nobody is left to answer: the access record and the metrics say 499, and no
    error or traceback is logged (it was a 500 with two tracebacks)."""
    server = start_server(Path(registry_copy.root), model_poll_seconds=0)
    host, port = server.url.removeprefix("http://").split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=5) as client:
        client.sendall(head.encode() + b"--b\r\n")  # then gone, 4,995 bytes short
    deadline = time.monotonic() + 10
    while 'status="499"' not in (metrics := server.client.get("/metrics").text):
        assert time.monotonic() < deadline, "no 499 counted"
        time.sleep(0.1)
    assert f'http_requests_total{{handler="{path}",method="POST",status="499"}} 1.0' in metrics
    server.stop()
    records = [json.loads(line) for line in (tmp_path / "server-1.log").read_text().splitlines()]
    assert [r["status"] for r in records if r.get("path") == path] == [499]
    assert [r for r in records if r["level"] == "error" or "exception" in r] == []
