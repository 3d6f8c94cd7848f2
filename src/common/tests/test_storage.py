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


@pytest.mark.parametrize("where", ["local", pytest.param("gcs", marks=pytest.mark.integration)])
def test_upload_tree_leaves_out_what_skip_names(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    local = tmp_path / "tree"
    for rel in ("keep.txt", "sub/keep.txt", "sub/drop.log", "cache/x.txt", "cache.txt"):
        storage.write_text(local / rel, rel)
    base = request.getfixturevalue("storage_emulator") if where == "gcs" else str(tmp_path)
    dest = storage.join(base, "uploaded")
    seen: list[str] = []

    def skip(rel: str) -> bool:
        seen.append(rel)
        return rel.endswith(".log") or rel.startswith("cache/")

    storage.upload_tree(local, dest, skip=skip)
    prefix = dest.rstrip("/") + "/"
    uploaded = [uri.removeprefix(prefix) for uri in storage.list_files(dest)]
    assert uploaded == ["cache.txt", "keep.txt", "sub/keep.txt"]
    # skip sees every file once, as a posix path relative to the folder.
    assert sorted(seen) == ["cache.txt", "cache/x.txt", "keep.txt", "sub/drop.log", "sub/keep.txt"]
    assert storage.read_text(storage.join(dest, "sub/keep.txt")) == "sub/keep.txt"


def test_replace_dir_swaps_whole_folders(tmp_path: Path) -> None:
    target = tmp_path / "out"
    storage.write_text(target / "old.txt", "old")
    staging = tmp_path / ".out-staging"
    storage.write_text(staging / "new.txt", "new")
    storage.replace_dir(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_dir_keeps_the_old_target_when_the_swap_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out"
    storage.write_text(target / "old.txt", "old")
    staging = tmp_path / ".out-staging"
    storage.write_text(staging / "new.txt", "new")
    rename = Path.rename

    def rename_staging_fails(self: Path, to: str | Path) -> Path:
        if self == staging:
            raise OSError("interrupted")
        return rename(self, to)

    monkeypatch.setattr(Path, "rename", rename_staging_fails)
    with pytest.raises(OSError, match="interrupted"):
        storage.replace_dir(staging, target)
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out-staging", "out"]


def test_replace_dir_is_not_blocked_by_a_killed_runs_leftover(tmp_path: Path) -> None:
    """A run killed between the two renames leaves the old folder aside; in a container
    the next run has the same process id, so a name from the pid alone is taken."""
    target = tmp_path / "out"
    storage.write_text(target / "old.txt", "old")
    storage.write_text(tmp_path / f".out.old-{os.getpid()}" / "older.txt", "older")
    staging = tmp_path / ".out-staging"
    storage.write_text(staging / "new.txt", "new")
    storage.replace_dir(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_building_swaps_the_finished_folder_in(tmp_path: Path) -> None:
    target = tmp_path / "out"
    storage.write_text(target / "old.txt", "old")
    with storage.building(target) as staging:
        assert staging.parent == tmp_path and staging.is_dir()
        assert not list(staging.iterdir())
        storage.write_text(staging / "new.txt", "new")
        assert (target / "old.txt").exists(), "the old folder serves until the end"
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IXGRP, f"group cannot list: {oct(mode)}"


def test_a_failure_mid_build_leaves_the_old_target_intact(tmp_path: Path) -> None:
    target = tmp_path / "out"
    storage.write_text(target / "old.txt", "old")

    def build_half_then_fail() -> None:
        with storage.building(target) as staging:
            storage.write_text(staging / "half.txt", "half")
            raise RuntimeError("mid-build")

    with pytest.raises(RuntimeError, match="mid-build"):
        build_half_then_fail()
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "staging removed"


def test_building_a_new_target_creates_its_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out"
    with storage.building(target) as staging:
        storage.write_text(staging / "sub" / "x.txt", "x")
    assert (target / "sub" / "x.txt").read_text() == "x"


def test_delete_tree_removes_a_folder_and_accepts_a_missing_one(tmp_path: Path) -> None:
    storage.write_text(tmp_path / "tree" / "sub" / "x.txt", "x")
    storage.write_text(tmp_path / "tree2" / "y.txt", "y")
    storage.delete_tree(tmp_path / "tree")
    storage.delete_tree(tmp_path / "missing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree2"]


@pytest.mark.integration
def test_building_on_gcs_uploads_the_marker_last_and_drops_stale_objects(
    storage_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = f"{storage_emulator}/built"
    storage.write_text(storage.join(target, "stale.txt"), "from a larger run")
    storage.write_text(storage.join(target + "2", "keep.txt"), "other")
    uploads: list[str] = []
    write_bytes = storage.write_bytes

    def recording(uri: str | Path, data: bytes) -> None:
        uploads.append(str(uri).rsplit("/", 1)[-1])
        write_bytes(uri, data)

    monkeypatch.setattr(storage, "write_bytes", recording)
    with storage.building(target, last="done.json") as staging:
        assert not storage.is_gcs(staging)
        storage.write_text(staging / "a.txt", "a")
        storage.write_text(staging / "sub" / "b.txt", "b")
        storage.write_json(staging / "done.json", {"ok": True})
    assert list(storage.list_files(target)) == [
        f"{target}/a.txt",
        f"{target}/done.json",
        f"{target}/sub/b.txt",
    ]
    assert uploads[-1] == "done.json"
    assert storage.exists(storage.join(target + "2", "keep.txt")), "a sibling prefix is kept"
    assert not staging.exists()


def test_partial_writes_are_recognised_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temporaries: list[str] = []

    def killed(src: str, dst: str) -> None:
        temporaries.append(src)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        storage.write_text(tmp_path / "a.png", "x")
    [temporary] = temporaries
    assert storage.is_partial_write(temporary)
    assert not storage.is_partial_write(tmp_path / "a.png")
    assert not storage.is_partial_write(tmp_path / ".hidden.png")
    assert not storage.is_partial_write("gs://bucket/images/a.tmp")


@pytest.mark.integration
def test_delete_tree_on_gcs(storage_emulator: str) -> None:
    base = f"{storage_emulator}/doomed"
    storage.write_text(storage.join(base, "x.txt"), "x")
    storage.write_text(storage.join(base, "sub", "y.txt"), "y")
    storage.write_text(storage.join(base + "-kept", "z.txt"), "z")
    storage.delete_tree(base)
    storage.delete_tree(base)  # already gone: not an error
    assert list(storage.list_files(base)) == []
    assert list(storage.list_files(base + "-kept")) == [f"{base}-kept/z.txt"]


def test_a_write_syncs_unless_told_not_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    storage.write_bytes(tmp_path / "a" / "durable.bin", b"1")
    assert len(synced) == 1
    storage.write_bytes(tmp_path / "a" / "later.bin", b"2", durable=False)
    assert len(synced) == 1
    assert (tmp_path / "a" / "later.bin").read_bytes() == b"2"
    mode = stat.S_IMODE((tmp_path / "a" / "later.bin").stat().st_mode)
    assert mode & stat.S_IRGRP, f"group cannot read: {oct(mode)}"
    assert sorted(os.listdir(tmp_path / "a")) == ["durable.bin", "later.bin"]


def test_a_leftover_temporary_name_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A container restarted gets the same process id: a killed write's temporary may
    # already hold the name the next write would pick.
    import itertools

    monkeypatch.setattr(storage, "_partial_names", itertools.count())
    leftover = tmp_path / f".a.png.{os.getpid()}-0.tmp"
    leftover.write_bytes(b"torn")
    storage.write_bytes(tmp_path / "a.png", b"whole", durable=False)
    assert (tmp_path / "a.png").read_bytes() == b"whole"
    assert leftover.read_bytes() == b"torn"


def test_sync_files_covers_files_and_their_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [tmp_path / "x" / "a.png", tmp_path / "y" / "b.png"]
    for path in files:
        storage.write_bytes(path, b"data", durable=False)
    # Without syncfs (not Linux): every file and every folder holding one.
    synced: list[str] = []
    monkeypatch.setattr(storage, "_libc", lambda: None)
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    storage.sync_files([str(p) for p in files] + [str(tmp_path / "gone.png")])
    folders = [tmp_path / "x", tmp_path / "y", tmp_path]  # the last: gone.png's
    assert sorted(synced) == sorted(str(p) for p in [*files, *folders])
    storage.sync_files([])  # nothing to do


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="Linux syncfs")
def test_sync_files_on_linux_is_one_syncfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert storage._libc() is not None, "this Linux's C library has syncfs"
    calls: list[int] = []

    class Libc:
        def syncfs(self, fd: int) -> int:
            calls.append(fd)
            return 0

    monkeypatch.setattr(storage, "_libc", lambda: Libc())
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("fsync despite syncfs"))
    paths = [str(tmp_path / f"{i}.png") for i in range(50)]
    for path in paths:
        storage.write_bytes(path, b"x", durable=False)
    storage.sync_files(paths)
    assert len(calls) == 1
