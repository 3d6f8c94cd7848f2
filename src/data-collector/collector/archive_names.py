"""Archive entry names as Windows, macOS and Linux tools really write them.

Zip and tar store a member's path as text chosen by the tool that wrote it:
Windows tools may use `\\` as the separator, tar often prefixes `./`, old zip tools
write UTF-8 names without the UTF-8 flag. `entry_parts` turns such a name into
path parts, or says truthfully why the name is unsafe to use at all.
"""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile

# Bit 11 of a zip entry's flags: the name is UTF-8 (otherwise code page 437).
_ZIP_UTF8_FLAG = 0x800
# MS-DOS attribute bit for a directory, in the low byte of a zip entry's external_attr.
_DOS_DIRECTORY = 0x10
# Unix "system" in a zip entry's create_system: the high 16 bits of external_attr are st_mode.
_ZIP_UNIX = 3

_DRIVE = re.compile(r"^[A-Za-z]:")


def entry_parts(name: str) -> tuple[list[str], None] | tuple[None, str]:
    """`(parts, None)` for a usable relative path, or `(None, reason)` for an unsafe one.

    Both `/` and `\\` separate parts; empty and `.` parts are dropped, so `./a/b`,
    `a//b` and `a\\b` all give `["a", "b"]`. An empty list means the entry names
    no file (a bare `./`). Refused, each with its own reason: NUL bytes, network
    paths (`\\\\server\\share`, `//server/share`), absolute paths (`/x`, `\\x`),
    drive letters (`C:\\x` and the drive-relative `C:x`), and `..` parts.
    """
    if "\0" in name:
        return None, "unsafe archive entry: NUL byte in the name"
    if name.startswith(("\\\\", "//", "\\/", "/\\")):
        return None, "unsafe archive entry: network (UNC) path"
    if name.startswith(("/", "\\")):
        return None, "unsafe archive entry: absolute path"
    if _DRIVE.match(name):
        return None, f"unsafe archive entry: Windows drive letter {name[:2]!r}"
    parts = [part for part in re.split(r"[/\\]", name) if part not in ("", ".")]
    if ".." in parts:
        return None, "unsafe archive entry: '..' path traversal"
    return parts, None


def is_directory_name(name: str) -> bool:
    """Whether the name, with either separator, ends in one: a folder entry."""
    return name.endswith(("/", "\\"))


def zip_name(info: zipfile.ZipInfo) -> str:
    """The entry's name, reading UTF-8 names that lack the UTF-8 flag as UTF-8.

    Without the flag, zipfile decodes the bytes as code page 437; many tools
    (Info-ZIP before 3.0, macOS, Java) wrote UTF-8 bytes anyway, which would come
    out as mojibake (`cafÃ©`). Bytes that are valid UTF-8 are almost never meant
    as code page 437, so they are taken as UTF-8; anything else stays code page 437.
    """
    if info.flag_bits & _ZIP_UTF8_FLAG or info.filename.isascii():
        return info.filename
    raw = info.filename.encode("cp437")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return info.filename


def zip_kind(info: zipfile.ZipInfo) -> str:
    """ "file", "directory" or why the entry is not a regular file."""
    if info.is_dir() or is_directory_name(info.filename) or info.external_attr & _DOS_DIRECTORY:
        return "directory"
    if info.create_system != _ZIP_UNIX:
        return "file"  # only Unix zips carry a file type; DOS attributes have none
    mode = info.external_attr >> 16
    if stat.S_IFMT(mode) == 0 or stat.S_ISREG(mode):  # no type bits: a plain file
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "archive entry is a symbolic link"
    return "archive entry is a special file (device, FIFO or socket)"


def tar_kind(info: tarfile.TarInfo) -> str:
    """ "file", "directory" or why the entry is not a regular file."""
    if info.isfile():
        return "file"
    if info.isdir():
        return "directory"
    if info.issym():
        return f"archive entry is a symbolic link (to {info.linkname!r})"
    if info.islnk():
        return f"archive entry is a hard link (to {info.linkname!r})"
    if info.ischr() or info.isblk():
        return "archive entry is a device file"
    if info.isfifo():
        return "archive entry is a FIFO"
    return "archive entry is not a regular file"
