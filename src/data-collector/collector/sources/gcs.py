"""Objects under a Cloud Storage prefix, one folder per label."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from collector.base import Item, ItemRejectedError, Loader, SourceError, classify_path, rejected
from collector.fetch import too_big
from collector.sources.core import Context, Source
from common import storage
from common.services import ServiceError


@dataclass
class GcsSource(Source):
    """Objects under `gs://bucket/prefix/<label>/...`."""

    uri: str = ""

    def _blobs(self) -> list[Any]:
        try:
            blobs = storage.gcs_blobs(self.uri.rstrip("/") + "/")
        except ServiceError:
            raise  # unreachable or denied: the service's own one-line message
        except Exception as exc:  # the client raises many types; all mean "cannot list"
            raise SourceError(f"collect.uri: cannot list {self.uri}: {exc}") from exc
        return sorted((b for b in blobs if not b.name.endswith("/")), key=lambda b: b.name)

    async def items(self, ctx: Context) -> AsyncGenerator[Item, None]:
        if not storage.is_gcs(self.uri):
            raise SourceError(f"collect.uri: {self.uri!r} is not a gs://bucket/prefix URI")
        blobs = await asyncio.to_thread(self._blobs)
        if not blobs:
            raise SourceError(f"collect.uri: no objects under {self.uri}")
        self.total = len(blobs)
        _, prefix = storage.split_gcs(self.uri.rstrip("/") + "/")
        for blob in blobs:
            key = f"gs://{blob.bucket.name}/{blob.name}"
            classified = classify_path(blob.name[len(prefix) :].split("/"), label_at=0)
            if classified is None:
                continue
            label, problem = classified
            if problem:
                yield rejected(key, label, problem)
            elif blob.size is not None and blob.size > ctx.fetch_options.max_bytes:
                yield rejected(key, label, too_big(blob.size, ctx.fetch_options.max_bytes).reason)
            else:
                yield Item(key=key, label=label, load=_read_blob(blob))


def _read_blob(blob: Any) -> Loader:
    def download() -> bytes:
        with storage.gcs_errors(f"gs://{blob.bucket.name}/{blob.name}"):
            data: bytes = blob.download_as_bytes(**storage.gcs_call_options())
        return data

    async def load() -> bytes:
        try:
            data = await asyncio.to_thread(download)
        except ServiceError:
            raise  # the bucket, not this item: stop the run with the service's message
        except Exception as exc:  # the client already retried transient errors
            raise ItemRejectedError(f"download failed: {exc}") from exc
        return data

    return load
