"""A CSV or JSONL list of image URLs with labels."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

from collector.base import Item, ItemRejectedError, Loader, SourceError, label_problem, rejected
from collector.sources.core import Context, Source, is_url, path_of
from common import storage


@dataclass
class ManifestSource(Source):
    """A CSV (header `url,label`) or JSONL (`{"url": …, "label": …}`) list of images."""

    uri: str = ""

    async def _read(self, ctx: Context) -> str:
        try:
            if is_url(self.uri):
                assert ctx.fetcher is not None
                data = await ctx.fetcher.get(self.uri)
            else:
                data = await asyncio.to_thread(storage.read_bytes, self.uri)
        except ItemRejectedError as exc:
            raise SourceError(f"collect.uri: cannot download manifest {self.uri}: {exc}") from exc
        except FileNotFoundError as exc:
            raise SourceError(f"collect.uri: manifest {self.uri} not found") from exc
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise SourceError(f"collect.uri: manifest {self.uri} is not UTF-8 text") from exc

    def _rows(self, text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
        """(line number, row or a reason the row is unusable)."""
        suffix = path_of(self.uri).lower()
        jsonl = suffix.endswith((".jsonl", ".ndjson")) or (
            not suffix.endswith(".csv") and text.lstrip().startswith("{")
        )
        return _jsonl_rows(text) if jsonl else self._csv_rows(text)

    def _csv_rows(self, text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
        reader = csv.DictReader(io.StringIO(text))
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "url" not in fields or "label" not in fields:
            raise SourceError(
                f"collect.uri: manifest {self.uri} needs a header row with columns url,label "
                f"(found: {', '.join(fields) or 'nothing'}); or use JSONL with url and label keys"
            )
        for row in reader:
            yield reader.line_num, {(k or "").strip().lower(): v for k, v in row.items()}

    async def items(self, ctx: Context) -> AsyncGenerator[Item, None]:
        rows = list(self._rows(await self._read(ctx)))
        self.total = len(rows)
        for number, row in rows:
            yield self._item(ctx, number, row)

    def _item(self, ctx: Context, number: int, row: dict[str, Any] | str) -> Item:
        """The item one manifest row names, or a rejected item saying what is wrong with it."""
        where = f"{self.uri}:{number}"
        if isinstance(row, str):
            return rejected(where, "", f"manifest row: {row}")
        url = str(row.get("url") or "").strip()
        label = str(row.get("label") if row.get("label") is not None else "").strip()
        if not url:
            return rejected(where, label, "manifest row has no url")
        if is_url(self.uri):
            url = urljoin(self.uri, url)  # relative URLs are relative to the manifest
        if not is_url(url):
            return rejected(url, label, "only http:// and https:// URLs can be fetched")
        if problem := label_problem(label):
            return rejected(url, label, f"manifest line {number}: {problem}")
        return Item(key=url, label=label, load=_fetch(ctx, url))


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"not valid JSON: {exc.msg}"
            continue
        yield number, row if isinstance(row, dict) else "not a JSON object"


def _fetch(ctx: Context, url: str) -> Loader:
    async def load() -> bytes:
        assert ctx.fetcher is not None
        return await ctx.fetcher.get(url)

    return load
