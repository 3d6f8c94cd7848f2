"""check_output: what must be writable for each kind of output (files in a folder, a
folder swapped in whole, a file), before any work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common import cli


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> set[Path]:
    """Folders this process may not write (tests run as root, which may write anywhere)."""
    denied: set[Path] = set()
    real_access = os.access

    def access(path: str | os.PathLike[str], mode: int) -> bool:
        if mode & os.W_OK and Path(path).resolve() in denied:
            return False
        return real_access(path, mode)

    monkeypatch.setattr(cli.os, "access", access)
    return denied


def refused(flag: str, uri: str, **kind: bool) -> str | None:
    """The error check_output exits with, or None when it lets the command go on."""
    try:
        cli.check_output(flag, uri, **kind)
    except cli.CliError as error:
        caught = error
    else:
        return None
    assert caught.code == cli.EXIT_USAGE
    return str(caught)


def test_a_writable_folder_in_a_read_only_parent_can_be_written_in(
    tmp_path: Path, read_only: set[Path]
) -> None:
    """A container's bind-mounted reports/ or models/ under a working folder it may not
    write: files go inside the folder, so only the folder counts."""
    (tmp_path / "reports").mkdir()
    read_only.add(tmp_path.resolve())
    assert refused("--report-dir", str(tmp_path / "reports")) is None
    assert refused("--metrics", str(tmp_path / "reports/metrics.json"), file=True) is None
    assert refused("--plots", str(tmp_path / "reports/plots")) is None


def test_a_read_only_folder_cannot_be_written_in(tmp_path: Path, read_only: set[Path]) -> None:
    (tmp_path / "reports").mkdir()
    read_only.add((tmp_path / "reports").resolve())
    error = refused("--report-dir", str(tmp_path / "reports"))
    assert error is not None and "cannot write in" in error and "permission denied" in error
    assert "run as a user who may write there" in error  # and what to do
    assert refused("--metrics", str(tmp_path / "reports/metrics.json"), file=True)
    assert refused("--plots", str(tmp_path / "reports/plots/new"))


def test_a_folder_swapped_in_whole_needs_its_parent(tmp_path: Path, read_only: set[Path]) -> None:
    """`storage.building` makes the new folder beside the old one: a writable folder in a
    read-only parent cannot be replaced."""
    (tmp_path / "models/candidate").mkdir(parents=True)
    read_only.add((tmp_path / "models").resolve())
    error = refused("--out", str(tmp_path / "models/candidate"), replaced=True)
    assert error is not None and str(tmp_path / "models") in error
    read_only.clear()
    read_only.add((tmp_path / "models/candidate").resolve())
    assert refused("--out", str(tmp_path / "models/candidate"), replaced=True) is None


def test_a_missing_path_needs_its_nearest_existing_parent(
    tmp_path: Path, read_only: set[Path]
) -> None:
    read_only.add(tmp_path.resolve())
    for kind in ({}, {"replaced": True}, {"file": True}):
        assert refused("--out", str(tmp_path / "a/b/c"), **kind), kind


def test_the_wrong_kind_of_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    assert "is a folder" in (refused("--metrics", str(tmp_path / "folder"), file=True) or "")
    assert "is a file" in (refused("--out", str(tmp_path / "file")) or "")
    assert "is a file" in (refused("--out", str(tmp_path / "file/sub")) or "")
