"""Open an archive for reading: a local file, or an HTTP(S) download as it arrives.

The download follows the fetcher's status and retry policy (`collector.fetch`):
429, 5xx, timeouts and connection errors are retried, `Retry-After` is honoured,
and a spent retry budget or a client error is a SourceError naming the URL.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from typing import IO, TYPE_CHECKING, Any

from collector.base import SourceError
from collector.fetch import (
    HTTP_FAILURES,
    FetchOptions,
    RequestFailure,
    RequestTimeoutError,
    TransportFailure,
    check_status,
    client_defaults,
    failure_reason,
    one_line,
    retry_policy,
)
from collector.sources.core import is_url

if TYPE_CHECKING:
    import httpx


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


class open_archive:  # noqa: N801 - used like open()
    """Open a local archive, or stream a remote one (retrying until the body starts).

    With `spool`, a download is copied to a temporary file first (a zip's index
    sits at its end); otherwise it is read as it arrives.
    """

    def __init__(self, uri: str, options: FetchOptions, spool: bool) -> None:
        self.uri, self.options, self.spool = uri, options, spool
        self._stack = ExitStack()

    def __enter__(self) -> IO[bytes]:
        with ExitStack() as stack:  # closes what was opened if opening fails midway
            handle = self._handle(stack)
            self._stack = stack.pop_all()
        return handle

    def _handle(self, stack: ExitStack) -> IO[bytes]:
        if not is_url(self.uri):
            return stack.enter_context(open(self.uri, "rb"))
        import httpx  # here, not at the top: only an archive URL needs it (start-up time)

        client = stack.enter_context(
            httpx.Client(timeout=httpx.Timeout(self.options.timeout), **client_defaults())
        )
        response = self._open(client)
        stack.callback(response.close)
        if not self.spool:
            return io.BufferedReader(_ChunkReader(_body(response, 1 << 16)), 1 << 20)
        spooled = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 - the stack closes it
        for chunk in _body(response, 1 << 20):
            spooled.write(chunk)
        spooled.seek(0)
        return spooled

    def _open(self, client: httpx.Client) -> httpx.Response:
        from tenacity import Retrying  # as httpx: only an archive URL needs it

        try:
            for attempt in Retrying(**retry_policy(self.options)):
                with attempt:
                    return self._attempt(client)
        except HTTP_FAILURES as exc:
            raise SourceError(
                f"collect.uri: cannot download archive {self.uri}: "
                f"{failure_reason(exc, self.options)}; check the URL, or run again later"
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _attempt(self, client: httpx.Client) -> httpx.Response:
        import httpx

        try:
            response = client.send(client.build_request("GET", self.uri), stream=True)
        except httpx.TimeoutException as exc:
            raise RequestTimeoutError(self.uri) from exc
        except httpx.TransportError as exc:
            raise TransportFailure(one_line(exc)) from exc
        except httpx.HTTPError as exc:
            raise RequestFailure(one_line(exc)) from exc
        try:
            check_status(response.status_code, response.reason_phrase, response.headers)
        except Exception:
            response.close()
            raise
        return response

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _body(response: httpx.Response, size: int) -> Iterator[bytes]:
    """The response body in chunks; a broken download raises OSError (a read error)."""
    import httpx

    try:
        yield from response.iter_bytes(size)
    except httpx.HTTPError as exc:
        raise OSError(one_line(exc)) from exc
