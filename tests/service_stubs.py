"""Loopback stand-ins for an external service that fails: refused, silent, or saying no.

`service_fault` is a fixture parametrized over the four ways, giving a base URL:

- `refused`: a closed port (connection refused);
- `hang`: a socket that accepts connections and never answers;
- `401` / `403`: an HTTP server answering every request with that status and a JSON
  error body shaped like Google's and W&B's.

Services that answer: `SecretManagerStub` (Secret Manager's REST API, holding secrets
and refusing some), `WandbGoesSilent` (W&B starting runs, then silent). Both record the
requests they get.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

import pytest
from support import free_port, start_server

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
        # Closing alone does not wake a thread blocked in accept() on Linux; shutting the
        # socket down does, so the thread ends here rather than living on in the session.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)
        for conn in self.held:
            conn.close()


def error_body(status: int, message: str, reason: str | None = None) -> bytes:
    """An error body shaped like Google's (`error.code`, `error.message`, `error.status`)
    and W&B's (`errors`)."""
    error: dict[str, Any] = {"code": status, "message": message}
    if reason:
        error["status"] = reason
    return json.dumps({"error": error, "errors": [{"message": message}]}).encode()


def status_handler(status: int) -> type[BaseHTTPRequestHandler]:
    body = error_body(status, f"stub says {status}")

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
        server, url = start_server(status_handler(int(kind)))
        try:
            yield url
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
        self.headers: list[dict[str, str]] = []  # of every request, in order
        headers = self.headers
        run = self.RUN

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                headers.append(dict(self.headers))
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

        self.server, self.url = start_server(Handler)

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


class SecretManagerStub:
    """A loopback Secret Manager REST API (`MEGA_SECRET_MANAGER_ENDPOINT=stub.url`).

    `GET /v1/projects/P/secrets/S/versions/V:access` answers `{"name", "payload":
    {"data": base64}}` for a secret `projects/P/secrets/S` in `secrets` (any version),
    403 PERMISSION_DENIED for one in `denied`, and 404 NOT_FOUND otherwise, as the real
    API does. `requests` records each request's (path without the query, headers).
    """

    def __init__(self, secrets: dict[str, bytes], denied: frozenset[str] = frozenset()) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                seen.append((path, dict(self.headers)))
                name = path.removeprefix("/v1/").removesuffix(":access")
                secret = name.split("/versions/", 1)[0]
                if secret in denied:
                    status, body = (
                        403,
                        error_body(
                            403,
                            f"Permission 'secretmanager.versions.access' denied for resource "
                            f"'{name}' (or it may not exist).",
                            "PERMISSION_DENIED",
                        ),
                    )
                elif secret in secrets and path.endswith(":access"):
                    data = base64.b64encode(secrets[secret]).decode()
                    status, body = (
                        200,
                        json.dumps({"name": name, "payload": {"data": data}}).encode(),
                    )
                else:
                    status, body = (
                        404,
                        error_body(
                            404, f"Secret [{secret}] not found or has no versions.", "NOT_FOUND"
                        ),
                    )
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server, self.url = start_server(Handler)

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
