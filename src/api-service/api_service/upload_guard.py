"""ASGI middleware: upload limits enforced while the body streams.

Plain ASGI (no `BaseHTTPMiddleware`), so it adds microseconds, not a task per
request, and the limit applies before any of the body is buffered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_service.errors import ErrorCode, error_body
from common.images import byte_limit_reason, human_bytes

_BODY_METHODS = ("POST", "PUT", "PATCH")


async def send_error(send: Send, status: int, code: ErrorCode, message: str) -> None:
    """Send the service's JSON error body (`api_service.errors`) straight from middleware."""
    body = error_body(code, message)
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


@dataclass
class _Framing:
    """What the request headers say about the body."""

    length: int | None = None
    content_type: str = ""
    chunked: bool = False
    invalid_length: bool = False

    @classmethod
    def of(cls, scope: Scope) -> _Framing:
        framing = cls()
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    framing.length = int(value)
                except ValueError:
                    framing.invalid_length = True
            elif name == b"content-type":
                framing.content_type = value.decode("latin-1").lower()
            elif name == b"transfer-encoding":
                framing.chunked = True
        return framing


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
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        framing = _Framing.of(scope)
        if framing.invalid_length:
            await send_error(send, 400, ErrorCode.BAD_REQUEST, "invalid Content-Length")
            return
        if scope["path"] in self.multipart_paths and not framing.content_type.startswith(
            "multipart/form-data"
        ):
            await send_error(
                send,
                415,
                ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                "send the image as multipart/form-data (a `file` field)",
            )
            return
        limit, setting = self.limit()
        if framing.length is not None and framing.length > limit + self.overhead:
            await send_error(
                send, 413, ErrorCode.TOO_LARGE, _too_large(framing.length, limit, setting)
            )
        elif framing.length is not None and not framing.chunked:
            # HTTP framing ends the body at Content-Length: nothing more to count.
            await self.app(scope, receive, send)
        else:
            counted = _CountedBody(limit + self.overhead)
            if await counted.run(self.app, scope, receive, send):
                shown = f"more than {human_bytes(counted.received)}"
                await send_error(send, 413, ErrorCode.TOO_LARGE, _too_large(shown, limit, setting))


class _CountedBody:
    """Runs the app on a body that is cut off once it passes `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.received = 0
        self.exceeded = False
        self.started = False

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> bool:
        """Run `app`; True when the body was cut off before it answered (send the 413)."""

        async def counted_receive() -> Message:
            if self.exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.max_bytes:
                    self.exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if self.exceeded:
                return  # the app's answer to a cut-off body is replaced by the 413
            self.started = self.started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, counted_receive, guarded_send)
        except Exception:
            if not self.exceeded:
                raise
        return self.exceeded and not self.started


def _too_large(size: int | str, limit: int, setting: str) -> str:
    """The refusal of a body over the limit, worded as the collector words a file's."""
    return f"upload {byte_limit_reason(size, limit, setting)}"
