"""A local folder with one subfolder per label."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

from collector.base import (
    Item,
    ItemRejectedError,
    Loader,
    SourceError,
    classify_path,
    is_metadata,
    rejected,
)
from collector.fetch import too_big
from collector.sources.core import Context, Source


@dataclass
class FolderSource(Source):
    """A local folder with one subfolder per label; files anywhere below it count."""

    root: str = ""
    remember: bool = False  # local reads are cheap, and a file may change in place

    def _files(self) -> list[Path]:
        root = Path(self.root)
        if not root.is_dir():
            raise SourceError(
                f"collect.uri: {self.root!r} is not a folder; give a local folder with one "
                "subfolder per label (gs:// prefixes use source gcs)"
            )
        return sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and not is_metadata(list(p.relative_to(root).parts))
        )

    async def items(self, ctx: Context) -> AsyncGenerator[Item, None]:
        root = Path(self.root)
        files = await asyncio.to_thread(self._files)
        self.total = len(files)
        if not files:
            raise SourceError(f"collect.uri: folder {self.root!r} holds no files")
        for path in files:
            rel = path.relative_to(root).as_posix()
            key = f"{self.root.rstrip('/')}/{rel}"
            classified = classify_path(rel.split("/"), label_at=0)
            if classified is None:
                continue
            label, problem = classified
            if problem:
                yield rejected(key, label, problem)
                continue
            yield Item(key=key, label=label, load=_read_local(path, ctx.fetch_options.max_bytes))


def _read_local(path: Path, max_bytes: int) -> Loader:
    def read() -> bytes:
        size = path.stat().st_size
        if size > max_bytes:
            raise too_big(size, max_bytes)
        return path.read_bytes()

    async def load() -> bytes:
        try:
            return await asyncio.to_thread(read)
        except OSError as exc:
            raise ItemRejectedError(f"cannot read: {exc.strerror or exc}") from exc

    return load
