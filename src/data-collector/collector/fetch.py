"""HTTP downloads: async aiohttp, a per-request deadline, and tenacity retries.

The status and retry policy of every HTTP request the collector sends lives
here, for the fetcher (one request per item) and the archive stream alike:
transient failures (connection errors, timeouts, 429 and 5xx) are retried with
exponential backoff and full jitter, waiting what a `Retry-After` header asks
for instead when the server sends one. Other 4xx answers are final: asking
again would get the same answer. `failure_reason` words a request that failed
for good in one line.

The per-item fetcher uses aiohttp: its per-request path costs a fraction of httpx's
(whose pool bookkeeping dominated the event loop at a few hundred requests a
second). The archive stream, a single synchronous download, keeps httpx and maps its
errors to the kinds here (`TransportFailure`, `RequestFailure`, `RequestTimeoutError`),
so both follow the same status and retry rules and word failures alike.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp

from collector.base import ItemRejectedError
from common.images import byte_limit_reason, human_bytes

if TYPE_CHECKING:
    # tenacity is imported once a request has failed (in the functions below): most
    # runs never retry, and a collection's start-up need not wait for it.
    from tenacity import RetryCallState

USER_AGENT = "mega-pipeline-collector/0.1"
# Never sleep longer than this for one Retry-After, whatever the server asks.
MAX_RETRY_AFTER = 60.0
MAX_BACKOFF = 30.0
MAX_REDIRECTS = 20  # as httpx's default, which the archive stream keeps


@dataclass(frozen=True)
class FetchOptions:
    """How hard to try: in-flight bound, deadline per request, retries, size limit."""

    concurrency: int = 32
    timeout: float = 30.0
    retries: int = 4
    backoff: float = 0.5
    max_bytes: int = 20 * 1024 * 1024


class TransientHTTPError(Exception):
    """A 429 or 5xx answer; worth asking again, after `retry_after` seconds if given."""

    def __init__(self, status: int, phrase: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status} {phrase}".strip())
        self.status = status
        self.retry_after = retry_after


class ClientHTTPError(Exception):
    """A 4xx answer other than 429: final, since asking again gets the same answer."""

    def __init__(self, status: int, phrase: str) -> None:
        super().__init__(f"HTTP {status} {phrase} (a client error; not retried)")
        self.status = status


class RequestTimeoutError(Exception):
    """No complete response within the per-request deadline."""


class TransportFailure(Exception):  # noqa: N818 - named like aiohttp's and httpx's kinds
    """A connection refused or reset, or a body cut short: worth asking again.

    The archive stream (httpx) raises it for httpx's transport errors, so this module
    and the fetcher's import path need no httpx.
    """


class RequestFailure(Exception):  # noqa: N818
    """A request that cannot succeed as made: too many redirects, an invalid URL."""


# What a request can fail with for good once the retries are spent.
HTTP_FAILURES = (
    TransientHTTPError,
    ClientHTTPError,
    RequestTimeoutError,
    TransportFailure,
    RequestFailure,
    aiohttp.ClientError,
)
# Failures of the connection or the transfer, worth a retry: refused or reset
# connections, a body cut short (aiohttp's payload error).
TRANSPORT_ERRORS = (
    TransportFailure,
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def check_status(status: int, phrase: str | None, headers: Mapping[str, str]) -> None:
    """Raise TransientHTTPError for 429 and 5xx, ClientHTTPError for other 4xx answers.

    `headers` is looked up case-insensitively by both clients' header types.
    """
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(headers.get("retry-after"))
        raise TransientHTTPError(status, phrase or "", retry_after)
    if status >= 400:
        raise ClientHTTPError(status, phrase or "")


def is_transient(exc: BaseException) -> bool:
    """Whether asking again may succeed: connection errors, timeouts, 429 and 5xx."""
    return isinstance(exc, (*TRANSPORT_ERRORS, TransientHTTPError, RequestTimeoutError))


def retry_wait(backoff: float, state: RetryCallState) -> float:
    """Seconds before the next attempt: the server's Retry-After (capped), else jittered backoff."""
    from tenacity import wait_random_exponential

    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, TransientHTTPError) and exc.retry_after is not None:
        return min(exc.retry_after, MAX_RETRY_AFTER)
    return float(wait_random_exponential(multiplier=backoff, max=MAX_BACKOFF)(state))


def retry_policy(options: FetchOptions) -> dict[str, Any]:
    """Keyword arguments for tenacity's `Retrying` or `AsyncRetrying`: one policy for both."""
    from tenacity import retry_if_exception, stop_after_attempt

    return {
        "stop": stop_after_attempt(options.retries + 1),
        "wait": lambda state: retry_wait(options.backoff, state),
        "retry": retry_if_exception(is_transient),
        "reraise": True,
    }


def failure_reason(exc: BaseException, options: FetchOptions) -> str:
    """One line saying why a request failed for good (an exception of HTTP_FAILURES)."""
    attempts = options.retries + 1
    tries = f"after {attempts} attempt{'s' if attempts > 1 else ''}"
    if isinstance(exc, TransientHTTPError):
        return f"{exc} ({tries})"
    if isinstance(exc, RequestTimeoutError | TimeoutError):
        return f"timed out: no complete answer within {options.timeout:g} s ({tries})"
    if isinstance(exc, TRANSPORT_ERRORS):
        return f"connection error: {one_line(exc)} ({tries})"
    if isinstance(exc, ClientHTTPError):
        return str(exc)
    return f"request failed: {one_line(exc)}"  # e.g. too many redirects, an invalid URL


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, or its type's name when it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__


def client_defaults() -> dict[str, Any]:
    """httpx client settings the archive stream uses (redirects, User-Agent)."""
    return {
        "follow_redirects": True,
        "max_redirects": MAX_REDIRECTS,
        "headers": {"User-Agent": USER_AGENT},
    }


def too_big(size: int | str, limit: int) -> ItemRejectedError:
    # The wording of the shared input contract: the API refuses alike.
    return ItemRejectedError(byte_limit_reason(size, limit))


class Fetcher:
    """Downloads URLs with a bound on requests in flight; use as an async context manager.

    One aiohttp session with a connection pool per host; the semaphore, not the pool,
    bounds what is in flight, so a request never waits for a pooled connection and the
    deadline (`FetchOptions.timeout`, start to last byte) is the server's alone.
    """

    def __init__(self, options: FetchOptions) -> None:
        self.options = options
        self.requests = 0  # every HTTP request sent, retries included
        self._limit = asyncio.Semaphore(options.concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fetcher:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            headers={"User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=self.options.timeout),
            # The body is read as bytes; no cookies between unrelated downloads.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(self, url: str) -> bytes:
        """The body of `url`, or ItemRejectedError with a reason once retries are spent."""
        try:
            async with self._limit:
                return await self._attempt(url)
        except Exception as exc:  # handed to the retry policy below as its attempt 1
            first: BaseException | None = exc
        # Tenacity only after a failure: its bookkeeping (~80 µs an item) costs more than a
        # loopback request. Its first attempt re-raises the failure above, so waits, stops
        # and the retry predicate are exactly what they would have been.
        from tenacity import AsyncRetrying

        try:
            async for attempt in AsyncRetrying(**retry_policy(self.options)):
                with attempt:
                    if first is not None:
                        failed, first = first, None
                        raise failed
                    async with self._limit:
                        return await self._attempt(url)
        except HTTP_FAILURES as exc:
            raise ItemRejectedError(failure_reason(exc, self.options)) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _attempt(self, url: str) -> bytes:
        assert self._session is not None, "use the Fetcher as `async with`"
        self.requests += 1
        try:
            async with self._session.get(url, max_redirects=MAX_REDIRECTS) as response:
                check_status(response.status, response.reason, response.headers)
                return await read_limited(response, self.options.max_bytes)
        except TimeoutError as exc:  # the session's deadline: start to last byte
            raise RequestTimeoutError(url) from exc


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or ItemRejectedError as soon as it is known to exceed `limit` bytes.

    The limit applies to the bytes kept, after aiohttp undoes any Content-Encoding: a
    gzip body declares its compressed length, which says nothing of what it expands to.
    """
    declared = response.content_length
    if declared is not None and declared > limit:
        raise too_big(declared, limit)
    if declared is not None and response.headers.get("Content-Encoding", "identity") == "identity":
        return await response.read()  # aiohttp stops at the declared length
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:  # stop reading: the body may be endless
            raise too_big(f"more than {human_bytes(limit)}", limit)
        chunks.append(chunk)
    return b"".join(chunks)
