"""The pieces every source and the collection engine share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Loader = Callable[[], Awaitable[bytes]]

# Characters that would let a label escape its folder or confuse other tools.
_BAD_LABEL_CHARS = set('/\\:*?"<>|') | {chr(c) for c in range(32)}


class SourceError(ValueError):
    """The source is misconfigured or unreadable as a whole; the message says what to fix."""


class ItemRejectedError(Exception):
    """One item cannot be collected; `reason` goes into collect_report.json."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Item:
    """One thing to collect: a stable key, its label, and how to get its bytes."""

    key: str  # URL, gs:// URI, file path or archive member: names the item in reports
    label: str
    load: Loader
    origin: str | None = None  # the manifest's `source` column; the key when unset

    @property
    def source(self) -> str:
        return self.origin if self.origin is not None else self.key


def label_problem(label: str) -> str | None:
    """Why `label` cannot be a folder name in the raw store, or None if it can."""
    if not label or not label.strip():
        return "empty label"
    if label in (".", "..") or label.startswith("."):
        return f"label {label!r} starts with '.'"
    if any(ch in _BAD_LABEL_CHARS for ch in label):
        return f"label {label!r} contains a path separator or a special character"
    if len(label) > 128:
        return f"label is {len(label)} characters long (at most 128)"
    return None


NO_LABEL_FOLDER = "not inside a label folder (expected <label>/<file>)"


# Files Windows Explorer leaves in folders (thumbnail caches, folder settings).
_WINDOWS_METADATA = {"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini"}


def is_metadata(parts: list[str]) -> bool:
    """OS and editor metadata, never data: hidden files (`.DS_Store`, macOS `._`
    AppleDouble files), macOS `__MACOSX/` archive folders and Windows' Thumbs.db
    and desktop.ini."""
    return any(
        part.startswith(".") or part == "__MACOSX" or part.lower() in _WINDOWS_METADATA
        for part in parts
    )


def classify_path(parts: list[str], label_at: int) -> tuple[str, str | None] | None:
    """`(label, problem)` of a file at path `parts`; None for metadata to skip.

    The label is the folder at `label_at` (0: the first below the root, -2: the
    file's own folder); `problem` says why the file cannot be kept under it.
    """
    if is_metadata(parts):
        return None
    if len(parts) < 2:
        return "", NO_LABEL_FOLDER
    label = parts[label_at]
    return label, label_problem(label)


def rejected(key: str, label: str, reason: str) -> Item:
    """An item known bad before any download; it is reported like any other failure."""

    async def load() -> bytes:
        raise ItemRejectedError(reason)

    return Item(key=key, label=label, load=load)
