"""Data versioning through `mega data`: push, clone, pull, versions, checkout; a gs:// remote."""

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
DVC = [sys.executable, "-m", "dvc"]
ENV = {
    **GIT_IDENTITY,
    "COLUMNS": "250",
}
DATA = ("data/raw/digits", "data/processed/digits")


def sh(args: list[str], cwd: Path) -> str:
    result = subprocess.run(
        args, cwd=cwd, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def hashes(root: Path) -> dict[str, str]:
    return {folder: storage.tree_hash(root / folder) for folder in DATA}


def new_project(root: Path, remote: str, limit: int) -> Path:
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root)
    ignore = shutil.ignore_patterns("__pycache__", "tests", "*.egg-info")
    shutil.copytree(REPO / "src", root / "src", ignore=ignore)
    write_params(root, {"collect": {"limit": limit}})
    sh(["git", "init", "-q"], root)
    sh([*DVC, "init", "-q"], root)
    sh([*DVC, "config", "core.analytics", "false"], root)
    sh([*DVC, "remote", "add", "--local", "--default", "store", remote], root)
    return root


def commit(root: Path, message: str) -> str:
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", message], root)
    return sh(["git", "rev-parse", "HEAD"], root).strip()


def test_versions_round_trip_and_checkout(tmp_path: Path) -> None:
    remote = str(tmp_path / "remote")
    project = new_project(tmp_path / "project", remote, limit=250)
    sh([MEGA, "process"], project)
    v1 = commit(project, "data v1: 250 digits")
    sh([MEGA, "data", "push"], project)
    v1_hashes = hashes(project)
    v1_stats = json.loads((project / "data/processed/digits/stats.json").read_text())

    write_params(project, {"collect": {"limit": 300}})
    out = sh([MEGA, "process"], project)
    assert "ran: collect, process" in out
    v2 = commit(project, "data v2: 300 digits")
    v2_hashes = hashes(project)
    assert v2_hashes != v1_hashes

    sh([MEGA, "data", "push"], project)

    listing = sh([MEGA, "data", "versions"], project)
    assert v1[:10] in listing and v2[:10] in listing
    assert "250 (train" in listing and "300 (train" in listing
    assert v1_stats["data_hash"][:12] in listing

    # A fresh clone has no data until it pulls; then the bytes are identical.
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "data/processed/digits").exists()
    sh([*DVC, "remote", "add", "--local", "--default", "store", remote], clone)
    sh([MEGA, "data", "pull"], clone)
    assert hashes(clone) == v2_hashes

    # Checking out v1 in the clone fetches v1's data from the remote.
    out = sh([MEGA, "data", "checkout", v1[:8]], clone)
    assert f"data version {v1_stats['data_hash'][:12]}" in out
    assert hashes(clone) == v1_hashes


def test_checkout_of_an_unknown_revision_is_explained(tmp_path: Path) -> None:
    project = new_project(tmp_path / "p", str(tmp_path / "remote"), limit=50)
    result = subprocess.run(
        [MEGA, "data", "checkout", "no-such-rev"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("mega: error: ")
    assert "'no-such-rev' is not a commit here" in result.stderr


@pytest.mark.integration
def test_gs_remote_against_the_emulator(tmp_path: Path, storage_emulator: str) -> None:
    project = new_project(tmp_path / "p", f"{storage_emulator}/dvc-store", limit=60)
    sh([MEGA, "collect"], project)
    before = storage.tree_hash(project / "data/raw/digits")
    sh([MEGA, "data", "push"], project)
    assert any(storage.list_files(f"{storage_emulator}/dvc-store"))
    shutil.rmtree(project / "data/raw/digits")
    shutil.rmtree(project / ".dvc/cache")
    sh([MEGA, "data", "pull"], project)
    assert storage.tree_hash(project / "data/raw/digits") == before
