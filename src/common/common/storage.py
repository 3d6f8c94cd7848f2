"""One file API over local paths and `gs://bucket/key` URIs.

Local writes go to a temporary file in the same folder and are renamed into
place, so readers never see a half-written file. Object writes to Cloud Storage
are atomic by nature.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.cloud import storage as gcs

GCS_SCHEME = "gs://"
_UMASK = os.umask(0)
os.umask(_UMASK)


def is_gcs(uri: str | Path) -> bool:
    """True for a `gs://` URI."""
    return str(uri).startswith(GCS_SCHEME)


def join(base: str | Path, *parts: str) -> str:
    """Join path parts with `/`, for both local paths and URIs."""
    if is_gcs(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def split_gcs(uri: str) -> tuple[str, str]:
    """`gs://bucket/a/b` → (`bucket`, `a/b`)."""
    if not is_gcs(uri):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, key = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri!r}")
    return bucket, key


@lru_cache
def gcs_client() -> gcs.Client:
    """A Cloud Storage client; honours STORAGE_EMULATOR_HOST for tests."""
    from google.cloud import storage as gcs_lib

    from common.settings import get_settings

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return gcs_lib.Client(project="emulator", credentials=AnonymousCredentials())
    return gcs_lib.Client(project=get_settings().gcp_project)


def _blob(uri: str) -> Any:
    bucket, key = split_gcs(uri)
    return gcs_client().bucket(bucket).blob(key)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a local file through a temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(staging: Path, target: Path) -> None:
    """Put a complete staging folder in place of `target` (same file system).

    The old folder is renamed aside first and deleted last, so at every moment
    one complete version exists under a known name.
    """
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Write bytes atomically to a local path or a `gs://` object."""
    if is_gcs(uri):
        _blob(str(uri)).upload_from_string(data)
    else:
        atomic_write_bytes(uri, data)


def write_text(uri: str | Path, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str | Path, obj: Any) -> None:
    """Write JSON (sorted keys, indented, trailing newline) atomically."""
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_bytes(uri: str | Path) -> bytes:
    if is_gcs(uri):
        from google.api_core.exceptions import NotFound

        try:
            data: bytes = _blob(str(uri)).download_as_bytes()
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

        with contextlib.suppress(NotFound):
            _blob(str(uri)).delete()
    else:
        Path(uri).unlink(missing_ok=True)


def exists(uri: str | Path) -> bool:
    """True if a file (or, locally, a folder) exists at `uri`."""
    if is_gcs(uri):
        return bool(_blob(str(uri)).exists())
    return Path(uri).exists()


def list_files(prefix: str | Path) -> Iterator[str]:
    """Every file under a folder or `gs://` prefix, as full paths/URIs, sorted."""
    if is_gcs(prefix):
        bucket, key = split_gcs(str(prefix).rstrip("/") + "/")
        names = sorted(b.name for b in gcs_client().list_blobs(bucket, prefix=key))
        yield from (f"{GCS_SCHEME}{bucket}/{name}" for name in names if not name.endswith("/"))
        return
    root = Path(prefix)
    if root.is_dir():
        yield from sorted(str(p) for p in root.rglob("*") if p.is_file())


def upload_tree(local_dir: str | Path, dest: str | Path) -> None:
    """Copy a local folder's files to a folder or `gs://` prefix."""
    local_dir = Path(local_dir)
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(local_dir).as_posix()
        if is_gcs(dest):
            _blob(join(dest, rel)).upload_from_filename(str(path))
        else:
            target = Path(dest, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


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
