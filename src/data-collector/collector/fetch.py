"""HTTP downloads: async httpx, a per-request deadline, and tenacity retries.

The status and retry policy of every HTTP request the collector sends lives
here, for the fetcher (one request per item) and the archive stream alike:
transient failures (connection errors, timeouts, 429 and 5xx) are retried with
exponential backoff and full jitter, waiting what a `Retry-After` header asks
for instead when the server sends one. Other 4xx answers are final: asking
again would get the same answer. `failure_reason` words a request that failed
for good in one line.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from collector.base import ItemRejectedError
from common.images import byte_limit_reason, human_bytes

USER_AGENT = "mega-pipeline-collector/0.1"
# Never sleep longer than this for one Retry-After, whatever the server asks.
MAX_RETRY_AFTER = 60.0
MAX_BACKOFF = 30.0
POOL_SIZE = 8  # connections per httpx client; see Fetcher.__init__


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


# What a request can fail with for good once the retries are spent.
HTTP_FAILURES = (TransientHTTPError, ClientHTTPError, RequestTimeoutError, httpx.HTTPError)


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


def check_status(response: httpx.Response) -> None:
    """Raise TransientHTTPError for 429 and 5xx, ClientHTTPError for other 4xx answers."""
    status = response.status_code
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise TransientHTTPError(status, response.reason_phrase, retry_after)
    if status >= 400:
        raise ClientHTTPError(status, response.reason_phrase)


def is_transient(exc: BaseException) -> bool:
    """Whether asking again may succeed: connection errors, timeouts, 429 and 5xx."""
    return isinstance(exc, httpx.TransportError | TransientHTTPError | RequestTimeoutError)


def retry_wait(backoff: float, state: RetryCallState) -> float:
    """Seconds before the next attempt: the server's Retry-After (capped), else jittered backoff."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, TransientHTTPError) and exc.retry_after is not None:
        return min(exc.retry_after, MAX_RETRY_AFTER)
    return float(wait_random_exponential(multiplier=backoff, max=MAX_BACKOFF)(state))


def retry_policy(options: FetchOptions) -> dict[str, Any]:
    """Keyword arguments for tenacity's `Retrying` or `AsyncRetrying`: one policy for both."""
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
    if isinstance(exc, RequestTimeoutError | httpx.TimeoutException):
        return f"timed out: no complete answer within {options.timeout:g} s ({tries})"
    if isinstance(exc, httpx.TransportError):
        return f"connection error: {str(exc) or type(exc).__name__} ({tries})"
    if isinstance(exc, ClientHTTPError):
        return str(exc)
    return f"request failed: {exc}"  # e.g. too many redirects, an invalid URL


def client_defaults() -> dict[str, Any]:
    """httpx client settings every collector request shares (redirects, User-Agent)."""
    return {"follow_redirects": True, "headers": {"User-Agent": USER_AGENT}}


def too_big(size: int | str, limit: int) -> ItemRejectedError:
    # The wording of the shared input contract: the API refuses alike.
    return ItemRejectedError(byte_limit_reason(size, limit))


class Fetcher:
    """Downloads URLs with a bound on requests in flight; use as an async context manager."""

    def __init__(self, options: FetchOptions) -> None:
        self.options = options
        self.requests = 0  # every HTTP request sent, retries included
        self._limit = asyncio.Semaphore(options.concurrency)
        # httpcore scans every pooled connection on each request, which costs more
        # than the request itself past a few dozen connections; several small pools
        # used in turn keep that scan short.
        shards = max(1, -(-options.concurrency // POOL_SIZE))
        per_pool = -(-options.concurrency // shards)
        self._clients = [self._client(per_pool) for _ in range(shards)]
        self._turn = itertools.cycle(self._clients)

    def _client(self, connections: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            # httpx's own timeouts catch a silent server early; the deadline in
            # `_attempt` also catches one that trickles bytes forever. Waiting for
            # a free pooled connection is not the server's fault: no pool timeout.
            timeout=httpx.Timeout(self.options.timeout, pool=None),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            **client_defaults(),
        )

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for client in self._clients:
            await client.aclose()

    async def get(self, url: str) -> bytes:
        """The body of `url`, or ItemRejectedError with a reason once retries are spent."""
        try:
            async for attempt in AsyncRetrying(**retry_policy(self.options)):
                with attempt:
                    async with self._limit:
                        return await self._attempt(url)
        except HTTP_FAILURES as exc:
            raise ItemRejectedError(failure_reason(exc, self.options)) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _attempt(self, url: str) -> bytes:
        self.requests += 1
        limit = self.options.max_bytes
        try:
            async with next(self._turn).stream("GET", url) as response:
                check_status(response)
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise too_big(int(declared), limit)
                chunks: list[bytes] = []
                size = 0
                async with asyncio.timeout(self.options.timeout):
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > limit:  # stop reading: the body may be endless
                            raise too_big(f"more than {human_bytes(limit)}", limit)
                        chunks.append(chunk)
                return b"".join(chunks)
        except TimeoutError as exc:
            raise RequestTimeoutError(url) from exc
