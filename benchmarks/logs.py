"""The API's access log: CPU per record, ours vs the standard library's JSON encoder.

Both sides run the log pipeline `api_service.logs.configure_logging` builds (records
queued on the caller's thread, formatted and written by the listener thread) and log
the same access records, as the access-log middleware does, to a file. The baseline
swaps the listener's handler for what the service used before: the same fields
(`api_service.logs.ServiceFields`) on python-json-logger's standard-library encoder,
and a `StreamHandler`, which writes and flushes every record. CPU is the process's
(every thread), from the first record until `stop_logging` has written the last. Prints
`access_log_cpu: <ratio>x (ours X µs vs baseline Y µs per record)`.
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


def cpu_per_record(sink: TextIO, swap: Callable[[TextIO], logging.Handler] | None) -> float:
    """Microseconds of process CPU per access record through the configured pipeline."""
    logs.configure_logging(stream=sink)
    if swap is not None:
        assert logs._listener is not None
        logs._listener.handlers = (swap(sink),)
    access = logging.getLogger("api_service.access")
    started = time.process_time()
    for i in range(RECORDS):
        access.info(
            "%s %s %s",
            "POST",
            "/v1/predict",
            200,
            extra={
                "request_id": f"0123456789ab-{i:x}",
                "method": "POST",
                "path": "/v1/predict",
                "status": 200,
                "duration_ms": 11.374,
                "client": "127.0.0.1",
            },
        )
    logs.stop_logging()
    return (time.process_time() - started) / RECORDS * 1e6


def main() -> None:
    ours, baseline = [], []
    with open(os.devnull, "w") as sink:
        for _ in range(ROUNDS):  # alternating, so both see the same machine
            ours.append(cpu_per_record(sink, None))
            baseline.append(cpu_per_record(sink, stdlib_handler))
    o, b = statistics.median(ours), statistics.median(baseline)
    print(f"access_log_cpu: {b / o:.2f}x (ours {o:.1f} µs vs baseline {b:.1f} µs per record)")


if __name__ == "__main__":
    main()
