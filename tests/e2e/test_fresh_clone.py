"""A real fresh clone of this repository: `mega run`, then every `mega` command.

Not a project the test builds: `git clone` of the repository the tests run in, with
its committed dvc.lock, reports and history, as a new user gets it. One default run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from support import REPO

from workflow.cli import app
from workflow.versions import list_versions

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MEGA = str(Path(sys.executable).parent / "mega")
ENV = {"COLUMNS": "250", "MEGA_WANDB_MODE": "offline"}
PROCESSED = "data/processed/digits"


def mega(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MEGA, *args], cwd=cwd, env={**os.environ, **ENV}, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip


def assert_clean_exit(result: subprocess.CompletedProcess[str], code: int = 0) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == code, f"{result.args} exited {result.returncode}:\n{output}"
    assert "Traceback" not in output, f"{result.args} printed a traceback:\n{output}"


def command_paths() -> list[tuple[str, ...]]:
    """Every `mega` command and sub-command, e.g. ("run",), ("data", "versions")."""

    def walk(command: Any, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        paths = [prefix]
        for name, sub in getattr(command, "commands", {}).items():  # a group's sub-commands
            paths += walk(sub, (*prefix, name))
        return paths

    return walk(typer.main.get_command(app), ())


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (REPO / ".git").exists():
        pytest.skip(f"{REPO} is not a git checkout: there is nothing to clone")
    base = tmp_path_factory.mktemp("fresh")
    root = base / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(root)], check=True)
    # What `make setup` adds: a default remote outside the clone (here, an empty one).
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "add", "--local", "--default", "local",
         str(base / "remote")],
        cwd=root, check=True, capture_output=True,
    )  # fmt: skip
    assert_clean_exit(mega("run", cwd=root))
    return root


def test_the_default_run_leaves_git_clean(clone: Path) -> None:
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout
    diff = subprocess.run(["git", "diff"], cwd=clone, capture_output=True, text=True).stdout
    assert status == "", (
        "a fresh clone's `make run` changed committed files; after changing a stage's code "
        f"or params, regenerate them with `make lock-run` and commit.\n{status}\n{diff[:6000]}"
    )
    again = mega("run", cwd=clone)
    assert_clean_exit(again)
    assert "ran:" not in again.stdout, again.stdout


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "mega")
def test_every_command_has_help(clone: Path, path: tuple[str, ...]) -> None:
    result = mega(*path, "--help", cwd=clone)
    assert_clean_exit(result)
    assert "Usage" in result.stdout


def test_status_and_data_versions_run_on_the_clone(clone: Path) -> None:
    status = mega("status", cwd=clone)
    assert_clean_exit(status)
    assert "production model: digits-cnn version 1" in status.stdout
    versions = mega("data", "versions", cwd=clone)
    assert_clean_exit(versions)
    assert f"versions of {PROCESSED}" in versions.stdout


@pytest.fixture
def history_restored(clone: Path) -> Iterator[Path]:
    """The clone; afterwards its commits and work tree as they were (a test may commit)."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout.strip()
    yield clone
    subprocess.run(["git", "reset", "-q", "--hard", head], cwd=clone, check=True)


def test_data_commands_run_or_explain_in_one_line(history_restored: Path) -> None:
    clone = history_restored
    assert_clean_exit(mega("data", "push", cwd=clone))
    assert_clean_exit(mega("data", "pull", cwd=clone))
    assert_clean_exit(mega("data", "checkout", "HEAD", cwd=clone))
    # A version made in another clone and never pushed (built here, so the case exists
    # whatever the history holds): listed with a note, refused by checkout, nothing changed.
    rev = _commit_never_pushed_version(clone)
    [absent] = [v for v in list_versions(clone, PROCESSED, with_stats=False) if v.rev == rev]
    versions = mega("data", "versions", cwd=clone)
    assert_clean_exit(versions)
    assert "never pushed" in versions.stdout
    result = mega("data", "checkout", absent.rev, cwd=clone)
    assert_clean_exit(result, code=1)
    assert "mega: error: cannot restore the data of " in result.stderr
    assert "neither this clone's DVC cache nor the remote" in result.stderr
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True
    )
    assert status.stdout == "", status.stdout


def _commit_never_pushed_version(clone: Path) -> str:
    """Commit a dvc.lock whose processed data is in no cache or remote; its commit id."""
    lock_path = clone / "dvc.lock"
    lock = yaml.safe_load(lock_path.read_text())
    [out] = [o for o in lock["stages"]["process"]["outs"] if o["path"] == PROCESSED]
    out["md5"] = "0" * 32 + ".dir"
    lock_path.write_text(yaml.safe_dump(lock, sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run([*git, "commit", "-qam", "data from another clone"], cwd=clone, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout.strip()
