"""A record of what was already collected, so a re-run or a resume fetches nothing twice.

Each kept item is recorded as `key → label, sha256, ext, width, height` once its file
is in place. Locally the journal is an append-only JSONL file, flushed per item, so a
run killed with SIGKILL loses at most the line being written (a torn last line is
ignored on read). A `gs://` raw store cannot append: there the whole journal is
rewritten every few seconds and at the end, so a kill loses at most those seconds,
whose items are then found already present by name and not written again.
"""

from __future__ import annotations

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
        if self._handle is None:
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.uri, "a", encoding="utf-8")  # noqa: SIM115 - held open
        self._handle.write(json.dumps(entry, sort_keys=True) + "\n")
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
