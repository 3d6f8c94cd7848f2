"""Loopback stand-ins for an external service that fails: refused, silent, or saying no.

`service_fault` is a fixture parametrized over the four ways, giving a base URL:

- `refused`: a closed port (connection refused);
- `hang`: a socket that accepts connections and never answers;
- `401` / `403`: an HTTP server answering every request with that status and a JSON
  error body shaped like Google's and W&B's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from support import free_port

FAULTS = ["refused", "hang", "401", "403"]
# sysexits EX_UNAVAILABLE, what every CLI exits with when a service fails it.
EXIT_UNAVAILABLE = 69


class HangingServer:
    """Accepts connections on loopback and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def status_handler(status: int) -> type[BaseHTTPRequestHandler]:
    body = json.dumps(
        {
            "error": {"code": status, "message": f"stub says {status}"},
            "errors": [{"message": f"stub says {status}"}],
        }
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture(params=FAULTS)
def service_fault(request: pytest.FixtureRequest) -> Iterator[str]:
    """`http://127.0.0.1:PORT` of a service failing in one of the FAULTS ways."""
    kind = request.param
    if kind == "refused":
        yield f"http://127.0.0.1:{free_port()}"
    elif kind == "hang":
        hanging = HangingServer()
        try:
            yield f"http://127.0.0.1:{hanging.port}"
        finally:
            hanging.close()
    else:
        server = ThreadingHTTPServer(("127.0.0.1", 0), status_handler(int(kind)))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()


# Small budgets keep the tests short; the behaviour is the same as with the defaults.
QUICK_BUDGET = {
    "MEGA_SERVICE_CONNECT_TIMEOUT": "2",
    "MEGA_SERVICE_READ_TIMEOUT": "2",
    "MEGA_SERVICE_RETRY_SECONDS": "4",
}


def run_module(
    module: str, args: list[str], cwd: object, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`python -m module args` in `cwd` with the quick service budget and `env` added."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**os.environ, **QUICK_BUDGET, **env},
        capture_output=True,
        text=True,
        timeout=100,  # a safety net only; the service budget ends the wait
    )


def assert_one_line_service_error(
    result: subprocess.CompletedProcess[str], prefix: str, service: str
) -> str:
    """The command failed with exit 69 and one `prefix: error: service…` line, no traceback."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == EXIT_UNAVAILABLE, output[-3000:]
    lines = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"{prefix}: error: {service}"), lines[0]
    return lines[0]


class WandbGoesSilent:
    """A loopback W&B server that starts runs, then never answers their uploads.

    GraphQL gets a run record for `UpsertBucket` and empty data otherwise, until the run
    starts streaming (the first request under `/files/`): from then on every request is
    held without an answer, as when the network goes away during a run.
    """

    RUN: ClassVar[dict[str, Any]] = {
        "upsertBucket": {
            "bucket": {
                "id": "YnVja2V0",
                "name": "silentrun",
                "displayName": "silent",
                "description": "",
                "config": "{}",
                "sweepName": None,
                "historyLineCount": 0,
                "project": {"id": "cHJvag==", "name": "p", "entity": {"id": "ZQ==", "name": "e"}},
            },
            "inserted": True,
        }
    }

    def __init__(self) -> None:
        stop = threading.Event()
        silent = threading.Event()
        self.stop = stop
        run = self.RUN

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path.startswith("/files/"):
                    silent.set()
                if silent.is_set():
                    stop.wait()  # held: no answer
                    return
                try:
                    operation = json.loads(body).get("operationName")
                except ValueError:
                    operation = None
                out = json.dumps({"data": run if operation == "UpsertBucket" else {}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_PUT = do_POST  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
