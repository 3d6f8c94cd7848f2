"""The API's access log: CPU per record, ours vs a `LogRecord` per request.

Every side runs the log pipeline `api_service.logs.configure_logging` builds (a queue
on the caller's thread, a listener thread that formats and writes) and logs the same
access records to a file. Ours is the access-log middleware's call, `log_access`,
which queues the JSON line it makes. "record" logs a `LogRecord` through the same
pipeline (`JsonFormatter`, python-json-logger's orjson encoder). The baseline is the
service's first access log: that record, the same fields
(`api_service.logs.ServiceFields`) on python-json-logger's standard-library encoder,
and a `StreamHandler`, which writes and flushes every record. CPU is the process's
(every thread), from the first record until `stop_logging` has written the last.
Prints `access_log_cpu: <ratio>x (ours X µs vs baseline Y µs per record)` and
`access_log_cpu_vs_record: …`.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

from api_service import logs

RECORDS = 20_000
ROUNDS = 5


class StdlibJsonFormatter(logs.ServiceFields, JsonFormatter):
    """The service's fields on python-json-logger's standard-library encoder."""


def stdlib_handler(stream: TextIO) -> logging.Handler:
    """The service's handler before: a record written and flushed at a time, stdlib JSON."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(StdlibJsonFormatter())
    return handler


def fields(i: int) -> dict[str, object]:
    """The `i`-th request's access fields, as the middleware gives them."""
    return {
        "request_id": f"0123456789ab-{i:x}",
        "method": "POST",
        "path": "/v1/predict",
        "status": 200,
        "duration_ms": 11.374,
        "client": "127.0.0.1",
    }


def as_record(message: str, extra: dict[str, object]) -> None:
    """An access record the way the middleware logged one before `log_access`."""
    logging.getLogger(logs.ACCESS_LOGGER).info(message, extra=extra)


def cpu_per_record(
    sink: TextIO,
    log: Callable[[str, dict[str, object]], None],
    swap: Callable[[TextIO], logging.Handler] | None = None,
) -> float:
    """Microseconds of process CPU per access record `log` gives the pipeline."""
    logs.configure_logging(stream=sink)
    if swap is not None:
        assert logs._listener is not None
        logs._listener.handlers = (swap(sink),)
    started = time.process_time()
    for i in range(RECORDS):
        log("POST /v1/predict 200", fields(i))
    logs.stop_logging()
    return (time.process_time() - started) / RECORDS * 1e6


def main() -> None:
    sides: dict[str, list[float]] = {"ours": [], "record": [], "baseline": []}
    with open(os.devnull, "w") as sink:
        for _ in range(ROUNDS):  # alternating, so all see the same machine
            sides["ours"].append(cpu_per_record(sink, logs.log_access))
            sides["record"].append(cpu_per_record(sink, as_record))
            sides["baseline"].append(cpu_per_record(sink, as_record, stdlib_handler))
    o, r, b = (statistics.median(sides[name]) for name in ("ours", "record", "baseline"))
    print(f"access_log_cpu: {b / o:.2f}x (ours {o:.1f} µs vs baseline {b:.1f} µs per record)")
    print(f"access_log_cpu_vs_record: {r / o:.2f}x (ours {o:.1f} µs vs record {r:.1f} µs)")


if __name__ == "__main__":
    main()
