import os
import stat
from pathlib import Path

import pytest

from common import storage


def test_local_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.json"
    storage.write_json(target, {"b": 1, "a": [1, 2]})
    assert storage.read_json(target) == {"a": [1, 2], "b": 1}
    assert os.listdir(target.parent) == ["file.json"]
    # Sorted keys and a trailing newline: identical data gives identical bytes.
    assert target.read_text().startswith('{\n  "a"')
    assert target.read_text().endswith("}\n")


def test_local_write_gets_ordinary_permissions(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    storage.write_text(target, "hello")
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode & stat.S_IRGRP, f"group cannot read: {oct(mode)}"


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "file.txt"
    storage.write_text(target, "old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        storage.write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_list_files_and_tree_hash(tmp_path: Path) -> None:
    storage.write_text(tmp_path / "b" / "2.txt", "two")
    storage.write_text(tmp_path / "a.txt", "one")
    assert list(storage.list_files(tmp_path)) == [
        str(tmp_path / "a.txt"),
        str(tmp_path / "b/2.txt"),
    ]
    before = storage.tree_hash(tmp_path)
    assert storage.tree_hash(tmp_path) == before
    storage.write_text(tmp_path / "a.txt", "changed")
    assert storage.tree_hash(tmp_path) != before


def test_join_and_split_uris() -> None:
    assert storage.join("gs://bucket/prefix/", "a", "/b") == "gs://bucket/prefix/a/b"
    assert storage.split_gcs("gs://bucket/a/b") == ("bucket", "a/b")
    with pytest.raises(ValueError, match="without a bucket"):
        storage.split_gcs("gs:///key")
    assert storage.join("data", "raw") == str(Path("data/raw"))


@pytest.mark.integration
def test_gcs_round_trip_against_the_emulator(storage_emulator: str, tmp_path: Path) -> None:
    base = f"{storage_emulator}/round-trip"
    storage.write_json(storage.join(base, "x.json"), {"k": 1})
    assert storage.exists(storage.join(base, "x.json"))
    assert not storage.exists(storage.join(base, "missing.json"))
    assert storage.read_json(storage.join(base, "x.json")) == {"k": 1}
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(base, "missing.json"))

    local = tmp_path / "tree"
    storage.write_text(local / "one.txt", "1")
    storage.write_text(local / "sub" / "two.txt", "2")
    storage.upload_tree(local, storage.join(base, "tree"))
    assert list(storage.list_files(storage.join(base, "tree"))) == [
        f"{base}/tree/one.txt",
        f"{base}/tree/sub/two.txt",
    ]
    storage.download_tree(storage.join(base, "tree"), tmp_path / "copy")
    assert storage.tree_hash(tmp_path / "copy") == storage.tree_hash(local)


def test_replace_dir_swaps_whole_folders(tmp_path: Path) -> None:
    target = tmp_path / "out"
    storage.write_text(target / "old.txt", "old")
    staging = tmp_path / ".out-staging"
    storage.write_text(staging / "new.txt", "new")
    storage.replace_dir(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
