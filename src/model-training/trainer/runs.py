"""The run directory of a training: where it is, and bounding what old runs left there.

Each worker backs its state up under the run directory at every epoch end, so a
killed run started again with the same inputs resumes. The folder's name is a key
of the output, the training parameters and the data version; backups of runs with
other keys are never resumed, so those older than a day are bounded here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common import storage
from common.params import PipelineParams

if TYPE_CHECKING:  # distribute imports TensorFlow
    from trainer.distribute import Task

RUNS_ROOT = ".mega/runs"
WANDB_ID = "wandb_run_id.txt"

# A backup touched within this long may belong to a training running now in the same
# checkout (one epoch of a large model can take over an hour) or to a run killed today
# that the user will start again: never removed. Older ones are kept newest first up to
# STALE_BACKUPS_KEPT, so a long run interrupted last week can still resume.
RECENT_BACKUP_SECONDS = 24 * 3600
STALE_BACKUPS_KEPT = 2


def default_run_dir(out: str, params: PipelineParams, data_hash: str) -> str:
    """Vertex AI's checkpoint folder, else `.mega/runs/<key>`.

    The key covers the output, the training parameters and the data version, so
    only a restart of the same run finds (and resumes) its backup.
    """
    if os.environ.get("AIP_CHECKPOINT_DIR"):
        return os.environ["AIP_CHECKPOINT_DIR"]
    key = json.dumps(
        {"out": out, "train": params.train.model_dump(), "data_hash": data_hash}, sort_keys=True
    )
    return storage.join(RUNS_ROOT, hashlib.sha256(key.encode()).hexdigest()[:16])


def _last_modified(folder: Path) -> float:
    """The newest modification time (s since the epoch) of `folder` and all it holds."""
    return max(
        (p.stat().st_mtime for p in (folder, *folder.rglob("*"))),
        default=folder.stat().st_mtime,
    )


def remove_stale_runs(
    keep: str,
    root: str = RUNS_ROOT,
    *,
    now: float | None = None,
    recent_seconds: float = RECENT_BACKUP_SECONDS,
    keep_old: int = STALE_BACKUPS_KEPT,
) -> list[tuple[str, int]]:
    """Bound the backups other runs left under `root`; returns each removed (folder, bytes).

    A backup is only ever resumed by a run with the same key (the same output,
    parameters and data), so those of killed runs with other parameters would stay
    on disk for good. `keep` (this run's folder) and every backup modified in the
    last `recent_seconds` (a live or just-killed run) stay; of the older ones the
    `keep_old` most recently modified stay, and the rest are deleted. `now` is the
    reference time in seconds since the epoch (default: the clock).
    """
    folder = Path(root)
    if storage.is_gcs(root) or not folder.is_dir():
        return []
    now = time.time() if now is None else now
    others = [
        (_last_modified(run), run)
        for run in folder.iterdir()
        if run.is_dir() and run.resolve() != Path(keep).resolve()
    ]
    old = sorted(
        ((mtime, run) for mtime, run in others if now - mtime >= recent_seconds), reverse=True
    )
    removed = []
    for _, run in old[keep_old:]:
        size = sum(f.stat().st_size for f in run.rglob("*") if f.is_file())
        storage.delete_tree(run)
        removed.append((str(run), size))
    return sorted(removed)


@dataclass(frozen=True)
class RunFolder:
    """Where this run backs up, and the backups of other runs removed to make room."""

    root: str
    worker: str  # this worker's own backup folder under `root`
    removed: list[tuple[str, int]]  # (folder, bytes) of stale backups deleted

    @property
    def wandb_id(self) -> str:
        """The file keeping the W&B run id, so that a resumed run continues the same run."""
        return storage.join(self.root, WANDB_ID)


def open_run(
    out: str, params: PipelineParams, data_hash: str, task: Task, run_dir: str | None
) -> RunFolder:
    """This run's backup folder (`run_dir`, else keyed by out, params and data).

    The chief bounds the backups of other runs under the default root first.
    """
    run = run_dir or default_run_dir(out, params, data_hash)
    stale: list[tuple[str, int]] = []
    if run_dir is None and task.is_chief and not os.environ.get("AIP_CHECKPOINT_DIR"):
        stale = remove_stale_runs(run)
    # Each worker backs up its own copy.
    return RunFolder(root=run, worker=storage.join(run, task.tag), removed=stale)


def clean_up(run: RunFolder, task: Task) -> None:
    """Remove this worker's backup; the chief also the W&B id and the emptied run folder."""
    storage.delete_tree(run.worker)
    if task.is_chief:
        storage.delete(run.wandb_id)
        if not storage.is_gcs(run.root):
            # Other workers remove their own folders; the run folder goes once empty.
            with contextlib.suppress(OSError):
                Path(run.root).rmdir()
