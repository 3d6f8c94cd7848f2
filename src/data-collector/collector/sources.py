"""Where items come from: one class per `collect.source` (see docs/data.md).

A source turns its configuration into a stream of `Item`s (key, label, loader).
Problems with one item become rejected items with a reason; problems with the
source as a whole (missing folder, unreadable manifest) raise SourceError.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import tarfile
import tempfile
import zipfile
from collections.abc import AsyncGenerator, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from collector.archive_names import entry_parts, is_directory_name, tar_kind, zip_kind, zip_name
from collector.base import (
    Item,
    ItemRejectedError,
    SourceError,
    classify_path,
    is_metadata,
    label_problem,
    rejected,
)
from collector.fetch import USER_AGENT, Fetcher, FetchOptions, TransientHTTPError, too_big
from collector.journal import Journal
from common import storage
from common.params import CollectParams
from common.services import ServiceError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


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
    return urlsplit(uri).scheme in ("http", "https")


def _path_of(uri: str) -> str:
    return urlsplit(uri).path if is_url(uri) else uri


# ---------------------------------------------------------------- in-memory items


@dataclass
class PairsSource(Source):
    """`(label, bytes)` pairs already in memory: the digits data set and tests."""

    pairs: Iterable[tuple[str, bytes]] = ()
    remember: bool = False

    async def items(self, ctx: Context) -> AsyncGenerator[Item, None]:
        for index, (label, data) in enumerate(self.pairs):
            yield Item(
                key=f"{self.name}[{index}]", label=label, load=_const(data), origin=self.name
            )


def _const(data: bytes) -> Any:
    async def load() -> bytes:
        return data

    return load


def digits_source(limit: int | None) -> PairsSource:
    from collector.digits import iter_digits

    return PairsSource(name="digits", pairs=iter_digits(limit), total=_digits_total(limit))


def _digits_total(limit: int | None) -> int:
    return 1797 if limit is None else min(limit, 1797)


# ---------------------------------------------------------------- local folder


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


def _read_local(path: Path, max_bytes: int) -> Any:
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


# ---------------------------------------------------------------- Cloud Storage


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


def _read_blob(blob: Any) -> Any:
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


# ---------------------------------------------------------------- URL manifest


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
        suffix = _path_of(self.uri).lower()
        jsonl = suffix.endswith((".jsonl", ".ndjson")) or (
            not suffix.endswith(".csv") and text.lstrip().startswith("{")
        )
        if jsonl:
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, f"not valid JSON: {exc.msg}"
                    continue
                yield number, row if isinstance(row, dict) else "not a JSON object"
            return
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
            where = f"{self.uri}:{number}"
            if isinstance(row, str):
                yield rejected(where, "", f"manifest row: {row}")
                continue
            url = str(row.get("url") or "").strip()
            label = str(row.get("label") if row.get("label") is not None else "").strip()
            if not url:
                yield rejected(where, label, "manifest row has no url")
                continue
            if is_url(self.uri):
                url = urljoin(self.uri, url)  # relative URLs are relative to the manifest
            if not is_url(url):
                yield rejected(url, label, "only http:// and https:// URLs can be fetched")
            elif problem := label_problem(label):
                yield rejected(url, label, f"manifest line {number}: {problem}")
            else:
                yield Item(key=url, label=label, load=_fetch(ctx, url))


def _fetch(ctx: Context, url: str) -> Any:
    async def load() -> bytes:
        assert ctx.fetcher is not None
        return await ctx.fetcher.get(url)

    return load


# ---------------------------------------------------------------- archives


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
        path = _path_of(self.uri).lower()
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

            async def gone(key: str = key) -> bytes:
                raise ItemRejectedError(f"{key}: recorded as collected but its file is missing")

            items.append(Item(key=key, label=label, load=gone))
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
                    yield Item(key=member.key, label=member.label, load=_const(member.data))
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
        zipped = _path_of(self.uri).lower().endswith(".zip")
        with _open_archive(self.uri, options, spool=zipped) as handle:
            try:
                if zipped:
                    yield from self._zip_members(handle, options.max_bytes)
                else:
                    yield from self._tar_members(handle, options.max_bytes)
            except (
                tarfile.TarError,
                zipfile.BadZipFile,
                EOFError,
                OSError,
                httpx.HTTPError,
            ) as exc:
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


class _open_archive:  # noqa: N801 - used like open()
    """Open a local archive, or stream a remote one (retrying until the body starts)."""

    def __init__(self, uri: str, options: FetchOptions, spool: bool) -> None:
        self.uri, self.options, self.spool = uri, options, spool
        self._closers: list[Any] = []

    def __enter__(self) -> IO[bytes]:
        if not is_url(self.uri):
            handle = open(self.uri, "rb")  # closed in __exit__
            self._closers.append(handle)
            return handle
        client = httpx.Client(
            timeout=httpx.Timeout(self.options.timeout),
            follow_redirects=True,
            headers={"User-Agent": USER_AGENT},
        )
        self._closers.append(client)
        response = self._open(client)
        self._closers.append(response)
        if self.spool:
            spooled = tempfile.TemporaryFile()
            self._closers.append(spooled)
            for chunk in response.iter_bytes(1 << 20):
                spooled.write(chunk)
            spooled.seek(0)
            return spooled
        return io.BufferedReader(_ChunkReader(response.iter_bytes(1 << 16)), 1 << 20)

    def _open(self, client: httpx.Client) -> httpx.Response:
        def transient(exc: BaseException) -> bool:
            return isinstance(exc, httpx.TransportError | TransientHTTPError)

        for attempt in Retrying(
            stop=stop_after_attempt(self.options.retries + 1),
            wait=wait_random_exponential(multiplier=self.options.backoff, max=30),
            retry=retry_if_exception(transient),
            reraise=True,
        ):
            with attempt:
                response = client.send(client.build_request("GET", self.uri), stream=True)
                status = response.status_code
                if status == 429 or status >= 500:
                    response.close()
                    raise TransientHTTPError(status, response.reason_phrase, None)
                if status >= 400:
                    response.close()
                    raise SourceError(
                        f"collect.uri: archive {self.uri} answered HTTP {status} "
                        f"{response.reason_phrase}; check the URL"
                    )
                return response
        raise AssertionError("unreachable")

    def __exit__(self, *exc: object) -> None:
        for closer in reversed(self._closers):
            closer.close()


# ---------------------------------------------------------------- choosing one


def make_source(params: CollectParams) -> Source:
    """The source that `params` configure; SourceError says what is wrong with them."""
    uri = params.uri or ""
    if params.source == "digits":
        return digits_source(params.limit)
    if params.source == "folder":
        if is_url(uri) or storage.is_gcs(uri):
            raise SourceError(
                "collect.uri: source folder takes a local folder; "
                "use source gcs for gs:// or archive/manifest for URLs"
            )
        return FolderSource(name="folder", root=uri)
    if params.source == "gcs":
        if not storage.is_gcs(uri):
            raise SourceError(f"collect.uri: source gcs needs gs://bucket/prefix, got {uri!r}")
        return GcsSource(name="gcs", uri=uri)
    if params.source == "manifest":
        return ManifestSource(name="manifest", uri=uri)
    archive = ArchiveSource(name="archive", uri=uri)
    archive.check()
    return archive
