"""Archive entry names as Windows, macOS and Linux tools write them, in real zip and tar files.

Each case builds the archive in the test, collects it, and checks the labels that
came out and the reason given for every refused entry.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from fault_server import png

from collector.collect import CollectOptions, collect_source
from collector.fetch import FetchOptions
from collector.sources import ArchiveSource

FAST = CollectOptions(fetch=FetchOptions(concurrency=2, timeout=5, retries=0, backoff=0.01))

UNIX, DOS = 3, 0  # zip create_system values
DOS_DIRECTORY = 0x10
S_IFLNK, S_IFIFO, S_IFDIR = 0o120000, 0o010000, 0o040000


@dataclass(frozen=True)
class Entry:
    """One archive member: its raw name and what kind of entry it is."""

    name: str
    kind: str = "file"  # file, dir, symlink, hardlink, chr, blk, fifo
    data: bytes = b""
    system: int = UNIX  # zip only: the system that wrote it
    encoding: str | None = None  # zip only: raw name bytes without the UTF-8 flag


class _RawNameZipInfo(zipfile.ZipInfo):
    """A ZipInfo whose name is stored in a given encoding with the UTF-8 flag clear,
    as Windows Explorer (OEM code page) and old Info-ZIP/macOS tools (UTF-8) do."""

    encoding = "utf-8"

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:  # noqa: N802 - zipfile's name
        return self.filename.encode(self.encoding), self.flag_bits & ~0x800


def make_zip(path: Path, entries: list[Entry]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for entry in entries:
            info: zipfile.ZipInfo
            if entry.encoding:
                info = _RawNameZipInfo(entry.name)
                info.encoding = entry.encoding  # type: ignore[attr-defined]
            else:
                info = zipfile.ZipInfo(entry.name)
            info.create_system = entry.system
            if entry.kind == "dir":
                info.external_attr = DOS_DIRECTORY | (
                    (S_IFDIR | 0o755) << 16 if entry.system == UNIX else 0
                )
            elif entry.kind == "symlink":
                info.external_attr = (S_IFLNK | 0o777) << 16
            elif entry.kind == "fifo":
                info.external_attr = (S_IFIFO | 0o644) << 16
            elif entry.system == UNIX:
                info.external_attr = 0o100644 << 16
            archive.writestr(info, b"/etc/passwd" if entry.kind == "symlink" else entry.data)
    return path


TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def make_tar(path: Path, entries: list[Entry]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = TAR_TYPES[entry.kind]
            if entry.kind in ("symlink", "hardlink"):
                info.linkname = "/etc/passwd"
            if entry.kind == "file":
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                tar.addfile(info)
    return path


def collect(tmp_path: Path, archive: Path) -> tuple[list[str], dict[str, str]]:
    """(sorted labels collected, {entry name: reason} of refused entries)."""
    result = collect_source(
        ArchiveSource(name="archive", uri=str(archive)), str(tmp_path / "raw"), FAST
    )
    reasons = {f.item.split("!", 1)[1]: f.reason for f in result.failed}
    return sorted(item.label for item in result.items), reasons


# ------------------------------------------------------------------ names that are fine

READABLE: dict[str, tuple[str, list[Entry], list[str]]] = {
    "windows zip with backslashes and folder entries": (
        "zip",
        [
            Entry("photos\\", "dir", system=DOS),
            Entry("photos\\three\\", "dir", system=DOS),
            Entry("photos\\three\\a.png", data=png(1), system=DOS),
            Entry("photos\\seven\\b.png", data=png(2), system=DOS),
            Entry("photos\\three\\Thumbs.db", data=b"\xd0\xcf\x11\xe0", system=DOS),
            Entry("photos\\seven\\desktop.ini", data=b"[.ShellClassInfo]", system=DOS),
        ],
        ["seven", "three"],
    ),
    "macOS Archive Utility zip with __MACOSX and AppleDouble": (
        "zip",
        [
            Entry("photos/", "dir"),
            Entry("photos/three/a.png", data=png(3)),
            Entry("photos/three/.DS_Store", data=b"\0\0\0\1Bud1"),
            Entry("__MACOSX/", "dir"),
            Entry("__MACOSX/photos/three/._a.png", data=b"\0\5\26\7"),
            Entry("photos/three/._a.png", data=b"\0\5\26\7"),
        ],
        ["three"],
    ),
    "zip with ./ prefixes and doubled slashes": (
        "zip",
        [Entry("./photos/three/a.png", data=png(4)), Entry("photos//seven/b.png", data=png(5))],
        ["seven", "three"],
    ),
    "zip with a UTF-8 name and the UTF-8 flag": (
        "zip",
        [Entry("fotos/café/a.png", data=png(6)), Entry("fotos/猫/b.png", data=png(7))],
        ["café", "猫"],
    ),
    "zip with a UTF-8 name but no UTF-8 flag (old Info-ZIP, macOS)": (
        "zip",
        [
            Entry("fotos/café/a.png", data=png(8), encoding="utf-8"),
            Entry("fotos/猫/b.png", data=png(9), encoding="utf-8"),
        ],
        ["café", "猫"],
    ),
    "zip with a code page 437 name and no flag (Windows Explorer)": (
        "zip",
        [Entry("fotos\\café\\a.png", data=png(10), system=DOS, encoding="cp437")],
        ["café"],
    ),
    "tar with ./ prefixes, folder entries and AppleDouble (macOS bsdtar)": (
        "tar",
        [
            Entry("./", "dir"),
            Entry("./photos/", "dir"),
            Entry("./photos/three/", "dir"),
            Entry("./photos/three/a.png", data=png(11)),
            Entry("./photos/three/._a.png", data=b"\0\5\26\7"),
            Entry("./photos/seven/b.png", data=png(12)),
            Entry("./photos/.DS_Store", data=b"\0\0\0\1Bud1"),
        ],
        ["seven", "three"],
    ),
    "tar with non-ASCII names (PAX, UTF-8)": (
        "tar",
        [Entry("fotos/café/a.png", data=png(13)), Entry("fotos/猫/b.png", data=png(14))],
        ["café", "猫"],
    ),
}


@pytest.mark.parametrize("case", list(READABLE), ids=list(READABLE))
def test_names_real_tools_write_are_read(tmp_path: Path, case: str) -> None:
    kind, entries, labels = READABLE[case]
    build = make_zip if kind == "zip" else make_tar
    archive = build(tmp_path / f"photos.{'zip' if kind == 'zip' else 'tar.gz'}", entries)
    collected, reasons = collect(tmp_path, archive)
    assert reasons == {}
    assert collected == labels


# ------------------------------------------------------------------ names that stay refused

ABSOLUTE = "unsafe archive entry: absolute path"
UNC = "unsafe archive entry: network (UNC) path"
TRAVERSAL = "unsafe archive entry: '..' path traversal"

UNSAFE_NAMES = {
    "/abs/three/a.png": ABSOLUTE,
    "\\abs\\three\\a.png": ABSOLUTE,
    "\\\\server\\share\\three\\a.png": UNC,
    "//server/share/three/a.png": UNC,
    "C:\\photos\\three\\a.png": "unsafe archive entry: Windows drive letter 'C:'",
    "C:photos\\three\\a.png": "unsafe archive entry: Windows drive letter 'C:'",
    "d:/photos/three/a.png": "unsafe archive entry: Windows drive letter 'd:'",
    "../three/a.png": TRAVERSAL,
    "..\\three\\a.png": TRAVERSAL,
    "photos/../../three/a.png": TRAVERSAL,
    "photos\\three\\..\\..\\..\\a.png": TRAVERSAL,
}


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("name", list(UNSAFE_NAMES))
def test_unsafe_names_are_refused_with_a_true_reason(tmp_path: Path, kind: str, name: str) -> None:
    entries = [Entry("photos/three/ok.png", data=png(20)), Entry(name, data=png(21))]
    build = make_zip if kind == "zip" else make_tar
    archive = build(tmp_path / f"photos.{'zip' if kind == 'zip' else 'tar.gz'}", entries)
    collected, reasons = collect(tmp_path, archive)
    assert collected == ["three"]
    assert reasons == {name: UNSAFE_NAMES[name]}
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*.png")}
    assert all(p.parts[:2] == ("raw", "images") for p in written)  # nothing escaped


LINKS = {
    ("tar", "symlink"): "archive entry is a symbolic link (to '/etc/passwd')",
    ("tar", "hardlink"): "archive entry is a hard link (to '/etc/passwd')",
    ("tar", "chr"): "archive entry is a device file",
    ("tar", "blk"): "archive entry is a device file",
    ("tar", "fifo"): "archive entry is a FIFO",
    ("zip", "symlink"): "archive entry is a symbolic link",
    ("zip", "fifo"): "archive entry is a special file (device, FIFO or socket)",
}


@pytest.mark.parametrize(("kind", "entry_kind"), list(LINKS), ids=["-".join(k) for k in LINKS])
def test_links_and_special_files_are_refused(tmp_path: Path, kind: str, entry_kind: str) -> None:
    entries = [Entry("photos/three/ok.png", data=png(30)), Entry("photos/three/x.png", entry_kind)]
    build = make_zip if kind == "zip" else make_tar
    archive = build(tmp_path / f"photos.{'zip' if kind == 'zip' else 'tar.gz'}", entries)
    collected, reasons = collect(tmp_path, archive)
    assert collected == ["three"]
    assert reasons == {"photos/three/x.png": LINKS[(kind, entry_kind)]}
