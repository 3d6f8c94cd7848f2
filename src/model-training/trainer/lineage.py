"""Where a model came from: code version, data version, parameters, tracking run."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from typing import Any


def git_state() -> dict[str, Any]:
    """The commit and whether the work tree had changes; GIT_SHA when git is absent (images)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout.strip()
        )
        return {"git_sha": sha, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": os.environ.get("GIT_SHA", "unknown"), "git_dirty": None}


def build_lineage(
    *, data: str, data_hash: str, params: dict[str, Any], wandb_run: str | None
) -> dict[str, Any]:
    import tensorflow as tf

    return {
        **git_state(),
        "data": data,
        "data_hash": data_hash,
        "params": params,
        "wandb_run_id": wandb_run,
        "tensorflow": tf.__version__,
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
