"""One file API over local paths and `gs://bucket/key` URIs.

Local writes go to a temporary file in the same folder and are renamed into
place, so readers never see a half-written file. By default each is also synced to
disk before the rename; a writer of many small files may skip that (`durable=False`)
and make a whole batch durable at once with `sync_files`. Object writes to Cloud
Storage are atomic and durable by nature.

Whole folders are built beside their target and swapped in (`building`), so a failed
build leaves the old folder as it was.

Every Cloud Storage request is bounded by the settings' `ServiceBudget` (connect and
read timeouts, a retry deadline); a bucket that cannot be reached or that refuses the
credentials raises `common.services.ServiceError` with the way out (`common.gcs`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from common.gcs import GCS_SCHEME as GCS_SCHEME
from common.gcs import blob as _blob
from common.gcs import gcs_blobs as gcs_blobs
from common.gcs import gcs_call_options as gcs_call_options
from common.gcs import gcs_client as gcs_client
from common.gcs import gcs_errors as gcs_errors
from common.gcs import is_gcs as is_gcs
from common.gcs import probe as probe
from common.gcs import split_gcs as split_gcs

_UMASK = os.umask(0)
os.umask(_UMASK)


def join(base: str | Path, *parts: str) -> str:
    """Join path parts with `/`, for both local paths and URIs."""
    if is_gcs(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


_PARTIAL_SUFFIX = ".tmp"


def is_partial_write(path: str | Path) -> bool:
    """True for the temporary sibling of an `atomic_write_bytes` (`.<name>.XXXX.tmp`).

    Seen in a listing, it is a leftover of a writer that was killed mid-write.
    """
    name = str(path).replace(os.sep, "/").rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(_PARTIAL_SUFFIX)


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Write a local file through a temporary sibling and an atomic rename.

    `durable` syncs the content to disk before the rename (one fsync per file). Without
    it the file survives a killed process (the page cache outlives it) but not a power
    cut or a kernel crash until `sync_files` has covered it. The folder is created if
    missing; the file gets the usual mode (0666 less the umask).
    """
    folder, name = os.path.split(os.fspath(path))
    fd, tmp = _create_partial(folder, name)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_partial_names = itertools.count()


def _create_partial(folder: str, name: str) -> tuple[int, str]:
    """Open a new temporary sibling `.<name>.<pid>-<n>.tmp` (see `is_partial_write`).

    Cheaper than `tempfile.mkstemp` (no random names, no chmod afterwards), which
    counts when a collector writes a thousand small files a second. A name left by an
    earlier process with the same id (a container restarted) is skipped.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = os.path.join(folder, f".{name}.{os.getpid()}-{next(_partial_names)}{_PARTIAL_SUFFIX}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except FileNotFoundError:
            os.makedirs(folder or ".", exist_ok=True)
            return os.open(tmp, flags, 0o666), tmp


def sync_files(paths: Collection[str | Path]) -> None:
    """Make local files written with `durable=False` durable: content, names and all.

    On Linux one `syncfs` of the file system holding them (a single call however many
    files; it also flushes whatever else waits on that file system). Elsewhere, or if
    `syncfs` fails, an fsync of every file and of every folder holding one (the
    renames). A missing file is skipped (a concurrent run may have pruned it). Raises
    OSError when the disk refuses.
    """
    if not paths:
        return
    if _syncfs(next(iter(paths))):
        return
    for path in [*paths, *{Path(p).parent for p in paths}]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _syncfs(path: str | Path) -> bool:
    """Sync the file system holding `path` (Linux `syncfs`); False where it is not possible."""
    libc = _libc()
    if libc is None:
        return False
    try:
        fd = os.open(Path(path).parent, os.O_RDONLY)
    except OSError:
        return False
    try:
        return bool(libc.syncfs(fd) == 0)
    finally:
        os.close(fd)


@functools.cache
def _libc() -> Any:
    """The C library if it offers `syncfs` (Linux), else None; Python itself does not."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "syncfs") else None
    except OSError:
        return None


def replace_dir(staging: Path, target: Path) -> None:
    """Put a complete staging folder in place of `target` (same file system).

    The old folder is renamed aside first and deleted last, so at every moment
    one complete version exists under a known name; if the swap itself fails, the
    old folder is renamed back and the error raised.
    """
    # A unique name: a run killed between the renames leaves its aside folder behind,
    # and in a container the next run has the same process id.
    aside = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    moved = target.exists()
    if moved:
        target.rename(aside)
    try:
        staging.rename(target)
    except BaseException:
        if moved:
            aside.rename(target)
        raise
    delete_tree(aside)


def staging_dir(target: str | Path) -> Path:
    """A new empty local folder to build `target` in, for `swap_in`.

    Beside a local target (same file system, so the swap is a rename) and hidden
    (`.<name>-XXXX`); a local temporary folder for a `gs://` target.
    """
    if is_gcs(target):
        return Path(tempfile.mkdtemp(prefix="mega-staging-"))
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    staging.chmod(0o777 & ~_UMASK)  # mkdtemp makes 0700; the result gets the usual mode
    return staging


def swap_in(staging: Path, target: str | Path, last: str | None = None) -> None:
    """Make the complete local folder `staging` the new content of `target`.

    Local: `replace_dir` (readers see the old folder or the new one, never a mix).
    `gs://` (no rename there): every file is uploaded, `last` (a relative path: the
    completion marker readers check) after the others, and objects under `target`
    that `staging` does not hold are deleted before the marker goes up.
    """
    if not is_gcs(target):
        replace_dir(staging, Path(target))
        return
    files = {p.relative_to(staging).as_posix(): p for p in staging.rglob("*") if p.is_file()}
    for rel, path in sorted(files.items()):
        if rel != last:
            write_bytes(join(target, rel), path.read_bytes())
    base = str(target).rstrip("/") + "/"
    for uri in list(list_files(target)):
        if uri[len(base) :] not in files:
            delete(uri)  # left by an earlier, larger build
    if last is not None and last in files:
        write_bytes(join(target, last), files[last].read_bytes())


@contextlib.contextmanager
def building(target: str | Path, last: str | None = None) -> Iterator[Path]:
    """Build a folder beside `target`, then swap it in whole: `with building(out) as tmp:`.

    Yields an empty local folder (`staging_dir`). When the block ends normally its
    content replaces `target` (`swap_in`; `last` names a gs:// completion marker);
    when the block raises, `target` is left untouched. The staging folder is
    removed either way.
    """
    staging = staging_dir(target)
    try:
        yield staging
        swap_in(staging, target, last)
    finally:
        delete_tree(staging)


def delete_tree(uri: str | Path) -> None:
    """Remove a local folder or every object under a `gs://` prefix; a missing one is fine.

    Locally it is best effort (what cannot be removed stays): it runs in clean-ups,
    where an error of its own would hide the one that led there. Cloud Storage errors
    raise `ServiceError` as every other call does.
    """
    if is_gcs(uri):
        for name in list(list_files(uri)):
            delete(name)
    else:
        shutil.rmtree(uri, ignore_errors=True)


def write_bytes(uri: str | Path, data: bytes, durable: bool = True) -> None:
    """Write bytes atomically to a local path or a `gs://` object.

    `durable=False` skips the local fsync (see `atomic_write_bytes`, `sync_files`); an
    object upload is durable either way.
    """
    if is_gcs(uri):
        with gcs_errors(str(uri)):
            _blob(str(uri)).upload_from_string(data, **gcs_call_options())
    else:
        atomic_write_bytes(uri, data, durable=durable)


def write_text(uri: str | Path, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str | Path, obj: Any) -> None:
    """Write JSON (sorted keys, indented, trailing newline) atomically."""
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_bytes(uri: str | Path) -> bytes:
    if is_gcs(uri):
        from google.api_core.exceptions import NotFound

        try:
            with gcs_errors(str(uri)):
                data: bytes = _blob(str(uri)).download_as_bytes(**gcs_call_options())
        except NotFound as exc:
            raise FileNotFoundError(str(uri)) from exc
        return data
    return Path(uri).read_bytes()


def read_text(uri: str | Path) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str | Path) -> Any:
    return json.loads(read_text(uri))


def delete(uri: str | Path) -> None:
    """Remove one file or object; a missing one is not an error."""
    if is_gcs(uri):
        from google.api_core.exceptions import NotFound

        with contextlib.suppress(NotFound), gcs_errors(str(uri)):
            _blob(str(uri)).delete(**gcs_call_options())
    else:
        Path(uri).unlink(missing_ok=True)


def exists(uri: str | Path) -> bool:
    """True if a file (or, locally, a folder) exists at `uri`."""
    if is_gcs(uri):
        with gcs_errors(str(uri)):
            return bool(_blob(str(uri)).exists(**gcs_call_options()))
    return Path(uri).exists()


def list_files(prefix: str | Path) -> Iterator[str]:
    """Every file under a folder or `gs://` prefix, as full paths/URIs, sorted."""
    if is_gcs(prefix):
        bucket, _ = split_gcs(str(prefix))
        names = sorted(b.name for b in gcs_blobs(str(prefix).rstrip("/") + "/"))
        yield from (f"{GCS_SCHEME}{bucket}/{name}" for name in names if not name.endswith("/"))
        return
    root = Path(prefix)
    if root.is_dir():
        yield from sorted(str(p) for p in root.rglob("*") if p.is_file())


def upload_tree(
    local_dir: str | Path, dest: str | Path, skip: Callable[[str], bool] | None = None
) -> int:
    """Copy a local folder's files to a folder or `gs://` prefix; returns how many.

    `skip(relative_path)` (a posix path under `local_dir`, as `download_tree` passes it)
    leaves files out.
    """
    local_dir = Path(local_dir)
    copied = 0
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(local_dir).as_posix()
        if skip is not None and skip(rel):
            continue
        copied += 1
        if is_gcs(dest):
            with gcs_errors(str(dest)):
                _blob(join(dest, rel)).upload_from_filename(str(path), **gcs_call_options())
        else:
            target = Path(dest, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return copied


def download_tree(
    src: str, local_dir: str | Path, skip: Callable[[str], bool] | None = None
) -> None:
    """Copy every object under a `gs://` prefix (or a local folder) into `local_dir`.

    `skip(relative_path)` leaves files out. An object name that would land outside
    `local_dir` (`../` in it) is refused.
    """
    local_dir = Path(local_dir).resolve()
    base = src.rstrip("/") + "/"
    for uri in list_files(src):
        rel = uri[len(base) :] if is_gcs(src) else Path(uri).relative_to(src).as_posix()
        if skip is not None and skip(rel):
            continue
        target = (local_dir / rel).resolve()
        if not target.is_relative_to(local_dir):
            raise ValueError(f"{uri}: object name leads outside {local_dir}; refusing it")
        atomic_write_bytes(target, read_bytes(uri))


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def tree_hash(local_dir: str | Path, exclude: Collection[str] = ()) -> str:
    """A content hash of a local folder: relative paths and file contents.

    `exclude` names relative paths (posix) left out of the hash.
    """
    local_dir = Path(local_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(local_dir).as_posix()
        if relative not in exclude:
            digest.update(f"{relative}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()
