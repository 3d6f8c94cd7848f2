"""Data versions: what each commit's dvc.lock recorded for the processed data."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common import storage
from common.contracts import STATS, Stats

PROCESS_STAGE = "process"


@dataclass
class DataVersion:
    """The processed data as one commit recorded it."""

    rev: str
    date: str
    subject: str
    dvc_md5: str | None
    files: int | None
    stats: Stats | None

    @property
    def counts(self) -> str:
        if self.stats is None:
            return "? (data not here)"
        return f"{self.stats.examples} ({self.stats.split_sizes()})"


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ValueError(result.stderr.strip() or f"git {' '.join(args)} failed")
    return result.stdout


def processed_out(lock_text: str, processed: str) -> dict[str, Any] | None:
    """The process stage's entry for the processed folder in a dvc.lock (None if none)."""
    try:
        lock = yaml.safe_load(lock_text) or {}
    except yaml.YAMLError:
        return None  # e.g. a commit with conflict markers in dvc.lock: no version there
    if not isinstance(lock, dict):
        return None
    for out in (lock.get("stages") or {}).get(PROCESS_STAGE, {}).get("outs", []):
        if out.get("path") == processed:
            entry: dict[str, Any] = out
            return entry
    return None


def read_stats(root: Path, processed: str, rev: str) -> Stats | None:
    """stats.json of the processed data at `rev`, from the DVC cache or the default remote.

    None when neither holds it: a fresh clone's history names data versions made in
    other clones that were never pushed, and that is normal, not an error.
    """
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc_data.index import DataIndexError

    try:
        text = dvc.api.read(f"{processed}/{STATS}", repo=str(root), rev=rev, remote=None)
    except (DvcException, DataIndexError, FileNotFoundError, OSError):
        return None
    return Stats.parse(text, f"{processed}/{STATS} at {rev[:8]}")


def list_versions(root: Path, processed: str, with_stats: bool = True) -> list[DataVersion]:
    """Every commit that changed the processed data's entry in dvc.lock, newest first."""
    log = _git(root, "log", "--format=%H%x09%ad%x09%s", "--date=short", "--", "dvc.lock")
    versions: list[DataVersion] = []
    last_md5: str | None = None
    for line in reversed(log.splitlines()):
        rev, date, subject = line.split("\t", 2)
        out = processed_out(_git(root, "show", f"{rev}:dvc.lock"), processed)
        md5 = out.get("md5") if out else None
        if md5 is None or md5 == last_md5:
            continue  # dvc.lock changed, but not the data
        last_md5 = md5
        versions.append(
            DataVersion(
                rev=rev,
                date=date,
                subject=subject,
                dvc_md5=md5,
                files=out.get("nfiles") if out else None,
                stats=read_stats(root, processed, rev) if with_stats else None,
            )
        )
    return list(reversed(versions))


def resolve_rev(root: Path, rev: str) -> str:
    """The full commit id of `rev`, or a ValueError that says what went wrong."""
    try:
        return _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    except ValueError:
        raise ValueError(f"{rev!r} is not a commit here; see `mega data versions`") from None


def restore_lock(root: Path, rev: str, processed: str) -> None:
    """Put `rev`'s dvc.lock in the work tree (not the index), checking it records the data."""
    text = _git(root, "show", f"{rev}:dvc.lock")
    if processed_out(text, processed) is None:
        raise ValueError(f"{rev[:12]} records no {processed} in dvc.lock")
    storage.atomic_write_bytes(root / "dvc.lock", text.encode())
