"""Write a source's images into the raw store with a manifest and a report.

The engine pulls items from a source into a bounded queue served by workers,
`concurrency` of them loading at a time. Each worker loads an item (download, object
read, file read), validates it with Pillow, and writes it to
`images/<label>/<sha256>.<ext>` through a temporary name and a rename. A small item
is validated and written on the event loop (cheaper than two hops to a thread and
back); a larger one in a worker thread, where Pillow's decoder runs beside the loop.
Small means few bytes for the write, and for the check also few pixels declared in
the header: a tiny file can decode to millions of pixels.
Local files are written without an fsync each and made durable in batches before
their journal lines are written (`journal.GroupCommit`). The manifest and the report
are written once at the end; the journal lets a re-run skip whatever is already
collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from collector.base import Item, ItemRejectedError
from collector.fetch import Fetcher, FetchOptions, too_big
from collector.journal import GroupCommit, Journal
from collector.sources import Context, PairsSource, Source
from common import storage
from common.contracts import (
    COLLECT_REPORT,
    IMAGES_DIR,
    MANIFEST,
    ManifestItem,
    Rejected,
    raw_image_path,
    write_manifest,
)
from common.images import (
    MAX_PIXELS,
    ImageDecodeError,
    is_deep,
    load_image,
    open_image,
    sha256_hex,
    sniff_format,
)

if TYPE_CHECKING:
    from PIL import Image

    # Only the CLI reads params.yaml; pydantic's settings models and YAML need not load
    # for a caller that passes CollectOptions.
    from common.params import CollectParams

# Items up to this size are validated and written on the event loop: a 1 KB PNG takes
# about 0.1 ms, less than handing it to a thread and back; a 32 KiB JPEG about 1 ms.
INLINE_BYTES = 32 * 1024
# ... and validated there only if their header declares at most this many pixels: the
# bytes say little of the decoding work (a flat 32 KiB PNG can declare millions of
# pixels, hundreds of ms). A 256x256 photo is a JPEG of about 29 KiB that decodes in
# 0.8 ms; the slowest flat 256x256 file measured (RGBA PNG) 0.5-0.9 ms (2 busy cores).
INLINE_PIXELS = 256 * 256
GC_YOUNG = 10_000  # allocations between young-generation collections during a run


@dataclass(frozen=True)
class CollectOptions:
    """Limits and concurrency for one run (from params.yaml `collect:`)."""

    fetch: FetchOptions = field(default_factory=FetchOptions)
    max_pixels: int = MAX_PIXELS
    limit: int | None = None

    @classmethod
    def from_params(cls, params: CollectParams) -> CollectOptions:
        """The options that params.yaml's `collect:` section asks for."""
        # Every FetchOptions field has its namesake in `collect:`, so it is taken by name.
        fetch = {option.name: getattr(params, option.name) for option in fields(FetchOptions)}
        return cls(fetch=FetchOptions(**fetch), max_pixels=params.max_pixels, limit=params.limit)


class ProgressSink(Protocol):
    """Receives one call per finished item; the CLI draws a Rich progress bar."""

    def set_total(self, total: int | None) -> None: ...

    def advance(self, outcome: str) -> None: ...


@dataclass(repr=False)
class CollectResult:
    """What a collection run did."""

    out: str
    written: int = 0
    already_present: int = 0
    duplicates: int = 0
    failed: list[Rejected] = field(default_factory=list)
    items: list[ManifestItem] = field(default_factory=list)
    requests: int = 0  # HTTP requests sent, retries included

    def __repr__(self) -> str:
        # Counts, not every row: asyncio formats the finished main task (hence this
        # result) when it checks the SIGINT handler, which for 10,000 rows took a second.
        return (
            f"CollectResult(out={self.out!r}, items={self.total}, written={self.written}, "
            f"already_present={self.already_present}, duplicates={self.duplicates}, "
            f"failed={len(self.failed)}, requests={self.requests})"
        )

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def seen(self) -> int:
        return self.total + self.duplicates + len(self.failed)

    @property
    def failure_share(self) -> float:
        return len(self.failed) / self.seen if self.seen else 0.0

    @property
    def report(self) -> str:
        return storage.join(self.out, COLLECT_REPORT)

    def failures_by_reason(self) -> Counter[str]:
        """Failure counts by the reason's leading words (before any ':' or '(')."""
        return Counter(f.reason.split(":")[0].split(" (")[0].strip() for f in self.failed)


def _inspect(data: bytes, max_bytes: int, max_pixels: int) -> tuple[str, str, int, int]:
    """(sha256, extension, width, height) of a valid image, or ItemRejectedError.

    Valid means valid by the input contract in common.images, which the processor
    and the API apply too.
    """
    return _checked(data, _opened(data, max_bytes, max_pixels))


def _opened(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """The image with its header read (nothing decoded) within the limits, or ItemRejectedError."""
    if len(data) > max_bytes:
        raise too_big(len(data), max_bytes)
    try:
        return open_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise ItemRejectedError(str(exc)) from exc


def _checked(data: bytes, image: Image.Image) -> tuple[str, str, int, int]:
    """Decode `image`, opened from `data`: the facts `_inspect` gives, or ItemRejectedError."""
    try:
        load_image(image)
    except ImageDecodeError as exc:
        raise ItemRejectedError(str(exc)) from exc
    return sha256_hex(data), sniff_format(data).extension, image.width, image.height


def _intact(target: str, data: bytes) -> bool:
    """Whether the file already at `target` holds `data`.

    A local file that the journal does not vouch for may be one a power cut caught
    before it was synced (empty or partial under its final name): it is compared, and
    rewritten when it differs. An object in Cloud Storage is whole or absent.
    """
    if storage.is_gcs(target):
        return True
    try:
        return Path(target).read_bytes() == data
    except OSError:
        return False


def prune_stale(result: CollectResult) -> int:
    """Delete images that the run's manifest no longer lists; returns how many.

    The raw store persists across runs (DVC keeps it: `persist: true`), so a
    smaller `limit` or a changed source would otherwise leave files behind that
    the data version would still count. Call it only after a successful run.
    """
    keep = {storage.join(result.out, item.path) for item in result.items}
    stale = [uri for uri in _existing_files(result.out) if uri not in keep]
    for uri in stale:
        storage.delete(uri)
    return len(stale)


def _existing_files(out: str) -> set[str]:
    """Files already in the raw store; leftovers of a killed write are deleted, not counted."""
    found = set()
    for path in storage.list_files(storage.join(out, IMAGES_DIR)):
        if not storage.is_gcs(path) and storage.is_partial_write(path):
            Path(path).unlink(missing_ok=True)  # a temporary from a run killed mid-write
            continue
        found.add(path)
    return found


class _Run:
    """The state of one collection run."""

    def __init__(self, source: Source, out: str, options: CollectOptions) -> None:
        self.source = source
        self.out = out
        self.options = options
        self.result = CollectResult(out=out)
        self.kept: dict[tuple[str, str], tuple[int, ManifestItem]] = {}
        self.failures: list[tuple[int, Rejected]] = []
        self.outcomes: dict[int, tuple[str, str, str | None]] = {}
        self.progress: ProgressSink | None = None
        self._writing: dict[str, asyncio.Future[bool]] = {}  # targets written in threads now

    def _done(self, outcome: str) -> None:
        if self.progress is not None:
            self.progress.advance(outcome)

    def _fail(self, index: int, item: Item, reason: str) -> None:
        self.failures.append((index, Rejected(item=item.key, reason=reason)))
        self.outcomes[index] = (item.key, item.label, reason)
        self._done("failed")

    async def handle(self, ctx: Context, index: int, item: Item) -> None:
        entry = ctx.journal.get(item.key)
        if entry and entry.get("target") in ctx.existing and entry.get("label") == item.label:
            # Collected by an earlier run: no download, no decode.
            row = ManifestItem(
                path=entry["path"],
                label=item.label,
                sha256=entry["sha256"],
                source=item.source,
                width=entry["width"],
                height=entry["height"],
            )
            self._keep(index, item, row, entry["target"], data=None)
            return
        async with self._slots:  # `concurrency` items loading, validating, writing
            try:
                data = await item.load()
                inline = len(data) <= INLINE_BYTES and not storage.is_gcs(self.out)
                facts = await self._inspect(data, inline)
            except ItemRejectedError as exc:
                self._fail(index, item, exc.reason)
                return
            row, target = self._row(item, facts)
            if self._keep(index, item, row, target, data):
                await self._write(target, data, inline)
            elif not await self._twin_written(target):
                return  # nothing to journal: its twin's write failed, which stops the run
        entry = {"key": item.key, "target": target, **row.model_dump(exclude={"source"})}
        await self._commits.commit(None if storage.is_gcs(target) else target, entry)
        if (text := ctx.journal.due_upload()) is not None:
            # A gs:// journal is rewritten whole: never on the event loop.
            await asyncio.to_thread(storage.write_text, ctx.journal.uri, text)

    async def _twin_written(self, target: str) -> bool:
        """For a duplicate: False if its twin's write (in a thread now) fails, else True.

        The duplicate is journaled only once that file is in place, so the batch sync
        before its journal line covers the file.
        """
        writing = self._writing.get(target)
        return True if writing is None else await asyncio.shield(writing)

    async def _write(self, target: str, data: bytes, inline: bool) -> None:
        # Not synced here: GroupCommit syncs a batch before journaling it.
        if inline:
            storage.write_bytes(target, data, durable=False)
        else:
            done = self._writing[target] = asyncio.get_running_loop().create_future()
            written = False
            try:
                await asyncio.to_thread(storage.write_bytes, target, data, durable=False)
                written = True
            finally:
                del self._writing[target]
                done.set_result(written)  # waiting duplicates journal only a written file
        self.result.written += 1
        self._done("written")

    async def _inspect(self, data: bytes, inline: bool) -> tuple[str, str, int, int]:
        """Validate on the event loop an `inline` 8-bit item declaring few pixels, else in a thread.

        Reading the header of a small file costs what it costs inside the decoder; a large
        file's header, which may hold megabytes of metadata, is read in the thread.
        """
        limits = (self.options.fetch.max_bytes, self.options.max_pixels)
        if not inline:
            return await asyncio.to_thread(_inspect, data, *limits)
        image = _opened(data, *limits)
        # A deep (16-bit, float) image is checked in the thread too: its check needs
        # NumPy, whose first import would stall every download for a few hundred ms.
        if image.width * image.height <= INLINE_PIXELS and not is_deep(image):
            return _checked(data, image)
        return await asyncio.to_thread(_checked, data, image)

    def _row(self, item: Item, facts: tuple[str, str, int, int]) -> tuple[ManifestItem, str]:
        """The manifest row of a validated item and the file it goes to."""
        digest, ext, width, height = facts
        rel = raw_image_path(item.label, digest, ext)
        row = ManifestItem(
            path=rel,
            label=item.label,
            sha256=digest,
            source=item.source,
            width=width,
            height=height,
        )
        return row, storage.join(self.out, rel)

    def _keep(
        self, index: int, item: Item, row: ManifestItem, target: str, data: bytes | None
    ) -> bool:
        """Count the item; True if its bytes must still be written to `target`."""
        self.outcomes[index] = (item.key, item.label, None)
        ident = (row.label, row.sha256)
        if ident in self.kept:
            self.result.duplicates += 1
            # The lowest index wins so the manifest does not depend on timing.
            if index < self.kept[ident][0]:
                self.kept[ident] = (index, row)
            self._done("duplicate")
            return False
        self.kept[ident] = (index, row)
        if data is None or (target in self._existing and _intact(target, data)):
            self.result.already_present += 1
            self._done("present")
            return False
        self._existing.add(target)  # claimed now, so a concurrent duplicate is not rewritten
        return True

    async def run(self, progress: ProgressSink | None) -> CollectResult:
        self.progress = progress
        self._existing = await asyncio.to_thread(_existing_files, self.out)
        journal = Journal(self.out, enabled=self.source.remember)
        self._commits = GroupCommit(journal)
        fetch = self.options.fetch
        self._slots = asyncio.Semaphore(fetch.concurrency)
        async with Fetcher(fetch) as fetcher:
            ctx = Context(
                out=self.out,
                journal=journal,
                existing=self._existing,
                fetch_options=fetch,
                max_pixels=self.options.max_pixels,
                fetcher=fetcher,
            )
            try:
                complete = await self._pump(ctx)
                if complete:
                    self.source.finish(ctx, [self.outcomes[i] for i in sorted(self.outcomes)])
            finally:
                self.result.requests = fetcher.requests
                await self._commits.close()
                await asyncio.to_thread(journal.close)
        self.result.items = [row for _, row in self.kept.values()]
        self.result.failed = [rejected for _, rejected in sorted(self.failures, key=_first)]
        await asyncio.to_thread(self._write_outputs)
        return self.result

    async def _pump(self, ctx: Context) -> bool:
        """Feed items to the workers; True if the source was read to its end."""
        # Twice `concurrency`: a worker waiting for its item's group commit holds no slot,
        # so the others keep `concurrency` items loading meanwhile.
        workers = 2 * self.options.fetch.concurrency
        queue: asyncio.Queue[tuple[int, Item] | None] = asyncio.Queue(maxsize=2 * workers)

        async def work() -> None:
            while (job := await queue.get()) is not None:
                await self.handle(ctx, *job)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(work()) for _ in range(workers)]
                try:
                    complete = await self._feed(ctx, queue)
                except BaseException:
                    for task in tasks:
                        task.cancel()
                    raise
                for _ in tasks:
                    await queue.put(None)
        except BaseExceptionGroup as errors:
            # Report the cause (a SourceError, a failed write), not the task group's wrapper.
            raise errors.exceptions[0] from None
        return complete

    async def _feed(self, ctx: Context, queue: asyncio.Queue[tuple[int, Item] | None]) -> bool:
        limit = self.options.limit
        async with contextlib.aclosing(self.source.items(ctx)) as items:
            index = 0
            async for item in items:
                if limit is not None and index >= limit:
                    return False
                if index == 0 and self.progress is not None:
                    total = self.source.total
                    self.progress.set_total(min(total, limit) if total and limit else total)
                await queue.put((index, item))
                index += 1
        return True

    def _write_outputs(self) -> None:
        result = self.result
        write_manifest(storage.join(self.out, MANIFEST), result.items)
        # Only facts about the data: DVC hashes this folder, so this run's own counts
        # (written, already present) would make a re-run look like new data. They are
        # in the summary line and the run's log instead.
        storage.write_json(
            result.report,
            {
                "source": self.source.name,
                "items": result.total,
                "duplicates": result.duplicates,
                "failed": [f.model_dump() for f in result.failed],
            },
        )


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


def collect_source(
    source: Source,
    out: str,
    options: CollectOptions | None = None,
    progress: ProgressSink | None = None,
) -> CollectResult:
    """Collect everything `source` yields into the raw store `out` (a folder or gs:// URI)."""
    options = options or CollectOptions()

    async def main() -> CollectResult:
        # Enough threads for every worker to decode or write at once.
        workers = min(64, options.fetch.concurrency + 4)
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="collect")
        )
        return await _Run(source, out, options).run(progress)

    with _runner() as runner, _fewer_gc_passes():
        return runner.run(main())


@contextlib.contextmanager
def _fewer_gc_passes() -> Iterator[None]:
    """Collect cycles less often during a run; the old settings come back after it.

    A download allocates hundreds of container objects (aiohttp's request and response,
    futures, Pillow's image), so the default young-generation threshold (700) ran a
    collection every item or two and full passes over the whole heap grew with the
    run: 0.6 s of a 10,000-image run. Start-up objects are frozen out of those passes
    and the young generation collects every `GC_YOUNG` allocations instead.
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def _runner() -> asyncio.Runner:
    """An asyncio runner on uvloop where it is installed (not on Windows).

    uvloop's event loop and transports cut the per-request cost of the loop itself,
    which is most of what is left once a download is a few syscalls.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def collect(items: Iterable[tuple[str, bytes]], out: str, source: str) -> CollectResult:
    """Store each `(label, bytes)` item under `images/<label>/<sha256>.<ext>`.

    Files already present (same content hash) are not rewritten, so re-runs are
    idempotent; the manifest and report are rewritten atomically at the end.
    """
    return collect_source(PairsSource(name=source, pairs=items), out)
