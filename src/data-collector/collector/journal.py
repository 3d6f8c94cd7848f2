"""A record of what was already collected, so a re-run or a resume fetches nothing twice.

Each kept item is recorded as `key → label, sha256, ext, width, height` once its file
is durable. Locally the journal is an append-only JSONL file and the files are
written without an fsync each: `GroupCommit` syncs them in batches (one
`storage.sync_files` per batch) and only then appends the batch's lines and flushes
them, so the journal never names a file that a power cut could still lose. A run
killed with SIGKILL loses at most the line being written (a torn last line is ignored
on read) and the journal lines of the batch being synced; a power cut also loses
files not yet synced and journal lines still in the page cache. Either way a re-run
fetches the unrecorded items again; a file found under its name but not vouched for
by the journal is compared with the fetched bytes and rewritten if it differs.
A `gs://` raw store cannot append: there the whole journal is rewritten every few
seconds and at the end, so a kill loses at most those seconds, whose items are then
found already present by name and not written again.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import IO, Any

from common import storage

JOURNAL = ".collect_journal.jsonl"
GCS_FLUSH_SECONDS = 5.0


class Journal:
    """Key → record of collected items, persisted beside the raw data."""

    def __init__(self, out: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.uri = storage.join(out, JOURNAL)
        self.entries: dict[str, dict[str, Any]] = {}
        self._handle: IO[str] | None = None
        self._dirty = False
        self._last_flush = time.monotonic()
        if enabled:
            self._load()

    def _load(self) -> None:
        try:
            text = storage.read_text(self.uri)
        except FileNotFoundError:
            return
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill: its item is simply fetched again
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                self.entries[record["key"]] = record

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key) if self.enabled else None

    def record(self, key: str, **fields: Any) -> None:
        """Remember `key`; call only once its file is safely in place."""
        if not self.enabled:
            return
        entry = {"key": key, **fields}
        self.entries[key] = entry
        if storage.is_gcs(self.uri):
            self._dirty = True  # uploaded by the caller via `due_upload`, off the event loop
            return
        self._append([entry])

    def record_many(self, entries: list[dict[str, Any]]) -> None:
        """`record` for several entries (each with its "key"): one write, one flush."""
        if not self.enabled or not entries:
            return
        for entry in entries:
            self.entries[entry["key"]] = entry
        if storage.is_gcs(self.uri):
            self._dirty = True
            return
        self._append(entries)

    def _append(self, entries: list[dict[str, Any]]) -> None:
        if self._handle is None:
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.uri, "a", encoding="utf-8")  # noqa: SIM115 - held open
        self._handle.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
        self._handle.flush()  # in the page cache now: survives SIGKILL

    def due_upload(self) -> str | None:
        """For a gs:// journal: its full text when an upload is due, else None.

        The text is rendered here, on the caller's thread, so the upload can run in a
        worker thread while new entries keep arriving; the clock restarts now so
        concurrent callers do not upload the same state twice.
        """
        if not self._dirty or time.monotonic() - self._last_flush <= GCS_FLUSH_SECONDS:
            return None
        self._dirty = False
        self._last_flush = time.monotonic()
        return self._render()

    def flush(self) -> None:
        if self._dirty:
            storage.write_text(self.uri, self._render())
            self._dirty = False
        self._last_flush = time.monotonic()

    def _render(self) -> str:
        # Sorted, not in the order downloads happened to finish: the journal lies in
        # the raw store that DVC hashes, so equal data must give equal bytes.
        return "".join(
            json.dumps(self.entries[key], sort_keys=True) + "\n" for key in sorted(self.entries)
        )

    def close(self) -> None:
        """Persist everything; locally, compact the file to one line per key."""
        if not self.enabled:
            return
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            storage.write_text(self.uri, self._render())
        else:
            self.flush()


class GroupCommit:
    """Journals written files once they are durable, a batch at a time.

    `commit` queues an entry (with the local file to make durable, if any) and returns
    once a batch holding it has been synced (`storage.sync_files`, in a worker thread)
    and journaled. While one batch syncs, the next collects: one sync and one journal
    flush serve every item that finished meanwhile, instead of an fsync per file.
    """

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._files: list[str] = []
        self._entries: list[dict[str, Any]] = []
        self._next: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def commit(self, file: str | None, entry: dict[str, Any]) -> None:
        """Return once `file` (a local path, or None) is synced and `entry` journaled.

        Raises what syncing or journaling raised (an OSError: a full or failing disk).
        """
        if file is not None:
            self._files.append(file)
        self._entries.append(entry)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        done = self._next
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        # Shielded: a cancelled waiter must not cancel the batch others wait on.
        await asyncio.shield(done)

    async def _drain(self) -> None:
        while self._next is not None:
            files, entries, done = self._files, self._entries, self._next
            self._files, self._entries, self._next = [], [], None
            try:
                if files:
                    await asyncio.to_thread(storage.sync_files, files)
                self.journal.record_many(entries)  # after the sync: never ahead of the files
            except Exception as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

    async def close(self) -> None:
        """Wait for the batch in progress and any queued after it."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
