"""Folder, archive and Cloud Storage sources, and a gs:// raw store."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from fault_server import FaultServer, Route, png
from support import run_cli, write_params

from collector.base import SourceError, label_problem
from collector.collect import CollectOptions, collect_source
from collector.fetch import FetchOptions
from collector.sources import ArchiveSource, FolderSource, GcsSource, make_source
from common import storage
from common.contracts import read_manifest
from common.params import CollectParams

FAST = CollectOptions(fetch=FetchOptions(concurrency=4, timeout=5, retries=1, backoff=0.01))


def test_folder_source_takes_labels_from_subfolders(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for index, label in enumerate(["cat", "cat", "dog"]):
        (data / label).mkdir(parents=True, exist_ok=True)
        (data / label / f"{index}.png").write_bytes(png(index))
    (data / "dog" / "notes.txt").write_text("not an image")
    (data / "dog" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored
    (data / "dog" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")  # Windows metadata: ignored
    (data / "cat" / "desktop.ini").write_text("[.ShellClassInfo]")
    (data / "loose.png").write_bytes(png(9))
    result = collect_source(FolderSource(name="folder", root=str(data)), str(tmp_path / "raw"))
    assert sorted(item.label for item in result.items) == ["cat", "cat", "dog"]
    reasons = {Path(f.item).name: f.reason for f in result.failed}
    assert reasons == {
        "notes.txt": "not an image (PNG, JPEG, GIF, BMP, TIFF or WebP)",
        "loose.png": "not inside a label folder (expected <label>/<file>)",
    }
    assert not (tmp_path / "raw/.collect_journal.jsonl").exists()  # local files are re-read


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is not a folder"):
        collect_source(FolderSource(name="folder", root=str(tmp_path / "nope")), str(tmp_path))


def _tar(path: Path, members: dict[str, bytes], links: tuple[str, ...] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return path


HOSTILE = {
    "photos/daisy/a.png": png(1),
    "photos/daisy/b.png": png(2),
    "photos/tulip/c.png": png(3),
    "photos/LICENSE.txt": b"CC-BY",
    "../escape/evil.png": png(4),
    "/abs/evil.png": png(5),
    "photos/._daisy": b"mac metadata",
}


def test_archive_rejects_traversal_and_links(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "photos.tar.gz", HOSTILE, links=("photos/daisy/link.png",))
    result = collect_source(ArchiveSource(name="archive", uri=str(archive)), str(tmp_path / "raw"))
    assert sorted(item.label for item in result.items) == ["daisy", "daisy", "tulip"]
    reasons = {f.item.split("!", 1)[1]: f.reason for f in result.failed}
    assert reasons["../escape/evil.png"] == "unsafe archive entry: '..' path traversal"
    assert reasons["/abs/evil.png"] == "unsafe archive entry: absolute path"
    assert reasons["photos/daisy/link.png"] == "archive entry is a symbolic link (to '/etc/passwd')"
    assert reasons["photos/LICENSE.txt"].startswith("not an image")
    assert len(reasons) == 4
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*.png")}
    assert all(p.parts[:2] == ("raw", "images") for p in written)  # nothing escaped


@pytest.mark.integration
def test_zip_over_http_is_not_downloaded_again(http_server: FaultServer, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(6):
            archive.writestr(f"set/{'ab'[index % 2]}/{index}.png", png(index))
        archive.writestr("set/a/broken.png", png(7)[:30])
    url = http_server.add("/set.zip", Route(body=buffer.getvalue(), content_type="application/zip"))
    source = ArchiveSource(name="archive", uri=url)
    first = collect_source(source, str(tmp_path / "raw"), FAST)
    assert first.written == 6 and len(first.failed) == 1
    assert first.failed[0].item == f"{url}!set/a/broken.png"
    manifest = (tmp_path / "raw/manifest.jsonl").read_bytes()
    http_server.reset_hits()
    again = collect_source(ArchiveSource(name="archive", uri=url), str(tmp_path / "raw"), FAST)
    assert sum(http_server.hits.values()) == 0
    assert again.already_present == 6 and len(again.failed) == 1
    assert (tmp_path / "raw/manifest.jsonl").read_bytes() == manifest


@pytest.mark.integration
def test_gcs_source_into_a_gs_raw_store(storage_emulator: str, tmp_path: Path) -> None:
    for index in range(5):
        storage.write_bytes(f"{storage_emulator}/incoming/l{index % 2}/{index}.png", png(index))
    storage.write_bytes(f"{storage_emulator}/incoming/l0/readme.txt", b"hello")
    out = f"{storage_emulator}/raw/mine"
    first = collect_source(GcsSource(name="gcs", uri=f"{storage_emulator}/incoming"), out, FAST)
    assert first.written == 5 and len(first.failed) == 1
    items = read_manifest(f"{out}/manifest.jsonl")
    assert sorted(i.label for i in items) == ["l0", "l0", "l0", "l1", "l1"]
    for item in items:
        assert item.source.startswith(f"{storage_emulator}/incoming/")
        assert storage.exists(f"{out}/{item.path}")
    report = storage.read_json(f"{out}/collect_report.json")
    assert report["failed"][0]["item"].endswith("readme.txt")

    again = collect_source(GcsSource(name="gcs", uri=f"{storage_emulator}/incoming"), out, FAST)
    assert (again.written, again.already_present) == (0, 5)
    journal = storage.read_text(f"{out}/.collect_journal.jsonl").splitlines()
    assert len(journal) == 5


@pytest.mark.integration
def test_cli_collects_a_folder_into_gs(storage_emulator: str, tmp_path: Path) -> None:
    for index in range(3):
        (tmp_path / "in" / "x").mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / "x" / f"{index}.png").write_bytes(png(index))
    (tmp_path / "params.yaml").write_text(
        json.dumps({"collect": {"source": "folder", "uri": "in"}})
    )
    out = f"{storage_emulator}/raw/cli"
    result = run_cli([sys.executable, "-m", "collector", "--out", out], tmp_path)
    assert f"collect: 3 items in {out} (3 written" in result.stdout
    assert len(read_manifest(f"{out}/manifest.jsonl")) == 3


def test_params_need_a_uri_and_sources_check_it() -> None:
    with pytest.raises(ValueError, match=r"needs collect\.uri"):
        CollectParams(source="manifest")
    with pytest.raises(SourceError, match="gs://bucket/prefix"):
        make_source(CollectParams(source="gcs", uri="bucket/prefix"))
    with pytest.raises(SourceError, match="archive"):
        make_source(CollectParams(source="archive", uri="https://example.invalid/data.rar"))
    with pytest.raises(SourceError, match="local folder"):
        make_source(CollectParams(source="folder", uri="gs://b/p"))


def test_bad_labels_are_named() -> None:
    assert label_problem("cat") is None
    assert label_problem("") == "empty label"
    assert "starts with '.'" in (label_problem("..") or "")
    assert "path separator" in (label_problem("a/b") or "")


def test_manifest_without_url_column_says_what_is_expected(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,class\nx.png,1\n")
    write_params(tmp_path, {"collect": {"source": "manifest", "uri": "m.csv"}})
    result = subprocess.run(
        [sys.executable, "-m", "collector", "--out", "raw", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2  # the source params.yaml names is unusable
    [line] = result.stderr.splitlines()
    assert line.startswith("collect: error: ") and "header row with columns url,label" in line


@pytest.mark.integration
def test_tar_over_http_is_streamed(http_server: FaultServer, tmp_path: Path) -> None:
    archive = _tar(tmp_path / "photos.tar.gz", HOSTILE)
    url = http_server.add("/photos.tar.gz", Route(body=archive.read_bytes()))
    result = collect_source(ArchiveSource(name="archive", uri=url), str(tmp_path / "raw"), FAST)
    assert sorted(item.label for item in result.items) == ["daisy", "daisy", "tulip"]
    assert len(result.failed) == 3 and http_server.hits["/photos.tar.gz"] == 1


def test_a_replaced_local_archive_is_read_again(tmp_path: Path) -> None:
    # Regression: the journal replayed the old archive's members for the same path.
    archive = tmp_path / "photos.tar.gz"
    source = ArchiveSource(name="archive", uri=str(archive))
    _tar(archive, {"p/a/1.png": png(11), "p/b/2.png": png(12)})
    first = collect_source(source, str(tmp_path / "raw"), FAST)
    assert first.total == 2
    _tar(archive, {"p/a/1.png": png(11), "p/b/2.png": png(12), "p/b/3.png": png(13)})
    second = collect_source(
        ArchiveSource(name="archive", uri=str(archive)), str(tmp_path / "raw"), FAST
    )
    assert second.total == 3
    assert len(read_manifest(str(tmp_path / "raw/manifest.jsonl"))) == 3


def test_macos_metadata_folders_are_skipped_by_every_source(tmp_path: Path) -> None:
    # docs/data.md promises __MACOSX/ is ignored; only the archive source used to.
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    (data / "cat" / "1.png").write_bytes(png(21))
    (data / "__MACOSX" / "cat").mkdir(parents=True)
    (data / "__MACOSX" / "cat" / "1.png").write_bytes(b"resource fork")
    result = collect_source(FolderSource(name="folder", root=str(data)), str(tmp_path / "raw"))
    assert result.total == 1
    assert not result.failed


@pytest.mark.integration
def test_gcs_journal_uploads_are_handed_to_the_caller(storage_emulator: str) -> None:
    from collector.journal import GCS_FLUSH_SECONDS, Journal

    journal = Journal(f"{storage_emulator}/raw-journal")
    journal.record("https://example.invalid/a.png", target="t", sha256="s")
    assert journal.due_upload() is None  # not due yet: no upload inside record()
    journal._last_flush -= GCS_FLUSH_SECONDS + 1
    text = journal.due_upload()
    assert text is not None and "a.png" in text
    assert journal.due_upload() is None  # the same state is not uploaded twice
