"""A run of unchanged inputs is reproducible: same bytes, same dvc.lock, same model version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import GIT_IDENTITY, REPO, write_params

from common import storage

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MEGA = str(Path(sys.executable).parent / "mega")
ENV = {
    **GIT_IDENTITY,
    "COLUMNS": "200",
    "MEGA_WANDB_MODE": "offline",
}
# Everything a run writes that DVC or git tracks.
TRACKED = ("dvc.lock", "data", "models/candidate", "reports")


def sh(args: list[str], cwd: Path) -> str:
    result = subprocess.run(
        args, cwd=cwd, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every tracked output file, as DVC sees them (.dvcignore applied)."""
    ignored = {line.strip() for line in (root / ".dvcignore").read_text().splitlines()}
    files: dict[str, str] = {}
    for top in TRACKED:
        path = root / top
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            if file.is_file() and file.name not in ignored:
                files[file.relative_to(root).as_posix()] = storage.sha256_file(file)
    return files


def test_forced_rerun_gives_identical_outputs_and_no_new_version(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root)
    shutil.copytree(
        REPO / "src",
        root / "src",
        ignore=shutil.ignore_patterns("__pycache__", "tests", "*.egg-info"),
    )
    write_params(root, {"train": {"tracking": "wandb"}})
    sh(["git", "init", "-q"], root)
    sh([sys.executable, "-m", "dvc", "init", "-q"], root)
    shutil.copy(REPO / ".dvcignore", root)
    shutil.copy(REPO / ".gitignore", root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "template"], root)

    sh([MEGA, "run"], root)
    first = snapshot(root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "lock"], root)

    out = sh([MEGA, "run", "--force"], root)
    assert "ran: collect, process, train, evaluate, optimize, register" in out
    second = snapshot(root)
    differing = sorted(
        name for name in first.keys() | second.keys() if first.get(name) != second.get(name)
    )
    assert not differing, f"outputs that changed between two runs of the same inputs: {differing}"
    assert sh(["git", "status", "--porcelain"], root) == ""

    registry = root / "models/digits-cnn"
    assert sorted(p.name for p in registry.iterdir() if p.name.isdigit()) == ["1"]
    lineage = json.loads((registry / "1/lineage.json").read_text())
    # The version still records where and when it came from, honestly.
    assert lineage["wandb_run_id"] and lineage["trained_at"]
    assert len(lineage["git_sha"]) == 40 and lineage["git_dirty"] is False
