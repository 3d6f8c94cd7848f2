"""What every source shares: the listing context, the base class, URL helpers."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from urllib.parse import urlsplit

from collector.base import Item, Loader
from collector.fetch import Fetcher, FetchOptions
from collector.journal import Journal


@dataclass
class Context:
    """What a source may use while it lists items."""

    out: str
    journal: Journal
    existing: set[str]
    fetch_options: FetchOptions
    max_pixels: int
    fetcher: Fetcher | None = None


@dataclass
class Source:
    """Base class: `items()` yields what to collect; `finish()` runs after a full pass."""

    name: str
    total: int | None = None  # known up front for the progress bar, when it is
    remember: bool = True  # record items in the journal (worth it when loading costs)

    def items(self, ctx: Context) -> AsyncGenerator[Item, None]:
        raise NotImplementedError

    def finish(self, ctx: Context, outcomes: list[tuple[str, str, str | None]]) -> None:
        """Called with (key, label, failure reason) of every item when the pass completed."""


def is_url(uri: str) -> bool:
    """Whether `uri` is an http:// or https:// URL."""
    return urlsplit(uri).scheme in ("http", "https")


def path_of(uri: str) -> str:
    """The path part of a URL (for its suffix), or `uri` itself when it is not a URL."""
    return urlsplit(uri).path if is_url(uri) else uri


def const(data: bytes) -> Loader:
    """A loader that returns bytes already in memory."""

    async def load() -> bytes:
        return data

    return load
