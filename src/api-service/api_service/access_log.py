"""ASGI middleware: the access log with a request id, and the HTTP metrics.

Plain ASGI (no `BaseHTTPMiddleware`): it adds microseconds, not a task per request.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Callable

from prometheus_client import Gauge
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_service.errors import unexpected_error_response
from api_service.logs import log_access, request_id

# The status logged and counted for a request whose client closed the connection before
# it was answered (nginx's code; never sent).
CLIENT_CLOSED_REQUEST = 499
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Request ids: a random per-process prefix and a counter. uuid4() per request reads
# the OS random source each time, which costs a syscall on the event loop.
_ID_PREFIX = uuid.uuid4().hex[:12]
_ID_COUNTER = itertools.count(1)


def _next_id() -> str:
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


def _request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is a safe token, else a new id."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SAFE_ID.match(candidate):
                return candidate
            break
    return _next_id()


class AccessLogMiddleware:
    """Per request: a JSON access line with a request id (echoed as X-Request-ID;
    `api_service.logs.log_access`), the in-flight gauge, and the HTTP count and latency
    by route template.

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
        rid = _request_id(scope)
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        header = (b"x-request-id", rid.encode())

        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        if self.in_flight is not None:
            self.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # The client went away before its body was read: there is nobody to answer
            # and nothing failed here (not a 500 with a traceback in the log).
            status = CLIENT_CLOSED_REQUEST
        except Exception as exc:
            # Answered here rather than by the app's outermost error layer, which runs
            # outside this one: the 500 carries X-Request-ID and its log record the id.
            if started_response:
                raise  # too late to answer; the server closes the connection
            await unexpected_error_response(exc)(scope, receive, send_with_id)
        finally:
            if self.in_flight is not None:
                self.in_flight.dec()
            self._done(scope, rid, status, time.perf_counter() - started)
            request_id.reset(token)

    def _done(self, scope: Scope, rid: str, status: int, seconds: float) -> None:
        """Record the finished request in the HTTP metrics and the access log."""
        path = scope["path"]
        if self.record is not None and path not in self.unmeasured:
            # Routing stored the matched route in the scope. A route the upload
            # guard answered before routing counts as itself; anything else is "none".
            route = scope.get("route")
            handler = route.path if route else path if path in self.guarded else "none"
            self.record(handler, scope["method"], status, seconds)
        if self.enabled:
            client = scope.get("client")
            method = scope["method"]
            log_access(
                f"{method} {path} {status}",
                {
                    "request_id": rid,
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "client": client[0] if client else None,
                },
            )
