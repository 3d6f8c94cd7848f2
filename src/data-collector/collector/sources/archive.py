"""A .tar.gz/.tgz/.tar/.zip archive, local or over HTTP(S), with one folder per label."""

from __future__ import annotations

import asyncio
import tarfile
import zipfile
from collections.abc import AsyncGenerator, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from collector.archive_names import entry_parts, is_directory_name, tar_kind, zip_kind, zip_name
from collector.base import Item, SourceError, classify_path, rejected
from collector.fetch import FetchOptions, too_big
from collector.sources.archive_stream import open_archive
from collector.sources.core import Context, Source, const, is_url, path_of

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# What reading an archive to its end can fail with: a damaged file or a broken download.
_READ_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    OSError,
)  # OSError: a broken download


@dataclass
class _Member:
    key: str
    label: str
    data: bytes | None = None
    reason: str | None = None


@dataclass
class ArchiveSource(Source):
    """A .tar.gz/.tgz/.tar/.zip, local or over HTTP(S), with one folder per label.

    A tar archive is read as it downloads; a zip is spooled to a temporary file first
    (its index sits at the end). The folder that directly holds a file is its label.
    Entry names may use `/` or `\\` and a `./` prefix (see archive_names). Entries are
    never extracted by name, and absolute, drive-letter, network, `..` and link
    entries are rejected, so a hostile archive cannot write outside the raw store.
    """

    uri: str = ""

    def check(self) -> None:
        """SourceError unless the URI names an archive (and, when local, an existing file)."""
        path = path_of(self.uri).lower()
        if not path.endswith(ARCHIVE_SUFFIXES):
            raise SourceError(
                f"collect.uri: {self.uri!r} is not a {', '.join(ARCHIVE_SUFFIXES)} archive"
            )
        if not is_url(self.uri) and not Path(self.uri).is_file():
            raise SourceError(f"collect.uri: archive {self.uri!r} not found")

    @property
    def marker(self) -> str:
        return f"archive:{self.uri}"

    def fingerprint(self) -> str | None:
        """Size and modification time of a local archive: a replaced file is read again.

        An archive URL is taken as immutable (asking would cost a request per run):
        publish a changed archive under a new URL.
        """
        if is_url(self.uri):
            return None
        stat = Path(self.uri).stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def _replay(self, ctx: Context) -> list[Item] | None:
        """Items from a previous complete pass, if every kept file is still there."""
        done = ctx.journal.get(self.marker)
        if not done or done.get("limits") != [ctx.fetch_options.max_bytes, ctx.max_pixels]:
            return None
        if done.get("fingerprint") != self.fingerprint():
            return None  # the archive file changed since: read it again
        items: list[Item] = []
        for key, label, reason in done.get("members", []):
            if reason is not None:
                items.append(rejected(key, label, reason))
                continue
            entry = ctx.journal.get(key)
            if entry is None or entry.get("target") not in ctx.existing:
                return None  # something went missing: read the archive again
            # The engine finds it in the journal and never loads it; a load means the
            # journal entry no longer matches, and the bytes are not at hand.
            missing = f"{key}: recorded as collected but its file is missing"
            items.append(rejected(key, label, missing))
        return items

    async def items(self, ctx: Context) -> AsyncGenerator[Item, None]:
        self.check()
        replay = self._replay(ctx)
        if replay is not None:
            self.total = len(replay)
            for item in replay:
                yield item
            return
        members = self._members(ctx.fetch_options)
        try:
            while (member := await asyncio.to_thread(next, members, None)) is not None:
                if member.reason is not None:
                    yield rejected(member.key, member.label, member.reason)
                else:
                    assert member.data is not None
                    yield Item(key=member.key, label=member.label, load=const(member.data))
        finally:
            members.close()

    def finish(self, ctx: Context, outcomes: list[tuple[str, str, str | None]]) -> None:
        ctx.journal.record(
            self.marker,
            limits=[ctx.fetch_options.max_bytes, ctx.max_pixels],
            fingerprint=self.fingerprint(),
            members=[list(o) for o in outcomes],
        )

    def _members(self, options: FetchOptions) -> Generator[_Member, None, None]:
        zipped = path_of(self.uri).lower().endswith(".zip")
        try:
            with open_archive(self.uri, options, spool=zipped) as handle:
                if zipped:
                    yield from self._zip_members(handle, options.max_bytes)
                else:
                    yield from self._tar_members(handle, options.max_bytes)
        except _READ_ERRORS as exc:
            raise SourceError(
                f"archive {self.uri} could not be read to the end ({exc}); run again: "
                "entries already collected are not written twice"
            ) from exc

    def _member(self, name: str, size: int, kind: str, max_bytes: int) -> _Member | None:
        """Classify one entry: None to skip silently, or a member with a reason or label.

        `kind` is "file", "directory" or why the entry is not a regular file.
        """
        if kind == "directory" or is_directory_name(name):
            return None
        key = f"{self.uri}!{name}"
        parts, unsafe = entry_parts(name)
        if parts is None:
            return _Member(key, "", reason=unsafe)
        if not parts:
            return None
        classified = classify_path(parts, label_at=-2)
        if classified is None:
            return None
        label, problem = classified
        if kind != "file":
            return _Member(key, label, reason=kind)
        if problem:
            return _Member(key, label, reason=problem)
        if size > max_bytes:
            return _Member(key, label, reason=too_big(size, max_bytes).reason)
        return _Member(key, label)

    def _tar_members(self, handle: IO[bytes], max_bytes: int) -> Iterator[_Member]:
        with tarfile.open(fileobj=handle, mode="r|*") as tar:  # "|": a stream, no seeking
            for info in tar:
                member = self._member(info.name, info.size, tar_kind(info), max_bytes)
                if member is None:
                    continue
                if member.reason is None:
                    extracted = tar.extractfile(info)
                    assert extracted is not None
                    member.data = extracted.read()
                yield member

    def _zip_members(self, handle: IO[bytes], max_bytes: int) -> Iterator[_Member]:
        with zipfile.ZipFile(handle) as archive:
            for info in archive.infolist():
                member = self._member(zip_name(info), info.file_size, zip_kind(info), max_bytes)
                if member is None:
                    continue
                if member.reason is None:
                    member.data = archive.read(info)
                yield member
