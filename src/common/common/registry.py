"""A small model registry over local folders or `gs://`: versions and aliases.

Layout under the registry root:

    <name>/<version>/...        an immutable, complete model version
    <name>/<version>/version.json  written last: a version without it is incomplete
    <name>/aliases.json         {"production": "3", "candidate": "4"}

Versions are increasing integers. Publishing the same model twice (same content
hash) returns the existing version, so re-runs are idempotent.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Any, TypeVar

from common import storage
from common.contracts import Contract, ContractError

VERSION_FILE = "version.json"
C = TypeVar("C", bound=Contract)
ALIASES_FILE = "aliases.json"


class RegistryError(RuntimeError):
    """The registry is missing something the caller asked for."""


class RegistryFileError(ContractError):
    """A file in the registry (aliases, a version's record or documents) does not parse."""

    fix = (
        "repair it, or restore it from a copy: the registry is not a DVC output, "
        "so `mega run` does not rewrite it"
    )


def _read_object(uri: str) -> dict[str, Any]:
    """A registry JSON object; RegistryFileError naming `uri` when it does not parse."""
    try:
        data = storage.read_json(uri)
    except FileNotFoundError:
        raise
    except ValueError as exc:  # not JSON, or not UTF-8
        raise RegistryFileError(f"{uri}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RegistryFileError(f"{uri}: expected a JSON object, got {type(data).__name__}")
    return data


class ModelRegistry:
    """Versions and aliases of one model name under a registry root."""

    def __init__(self, root: str | Path, name: str) -> None:
        self.root = str(root)
        self.name = name
        self.base = storage.join(self.root, name)

    def version_uri(self, version: str) -> str:
        return storage.join(self.base, version)

    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        if not storage.is_gcs(self.base):
            # Locally, look one level down only: a SavedModel holds many files.
            base = Path(self.base)
            if not base.is_dir():
                return []
            return sorted(
                (
                    p.name
                    for p in base.iterdir()
                    if p.name.isdigit() and (p / VERSION_FILE).is_file()
                ),
                key=int,
            )
        found = set()
        marker = "/" + VERSION_FILE
        for uri in storage.list_files(self.base):
            normalized = uri.replace(os.sep, "/")
            if normalized.endswith(marker):
                found.add(normalized[: -len(marker)].rsplit("/", 1)[-1])
        return sorted((v for v in found if v.isdigit()), key=int)

    def read_document(self, version: str, name: str, contract: type[C]) -> C | None:
        """`version`'s document `name` as `contract`; None if the version has none.

        Raises:
            RegistryFileError: the file does not parse (its fix is not `mega run`).
        """
        uri = storage.join(self.version_uri(version), name)
        if not storage.exists(uri):
            return None
        try:
            return contract.read(uri)
        except ContractError as exc:
            raise RegistryFileError(str(exc)) from exc

    def version_info(self, version: str) -> dict[str, Any]:
        """`version.json` of `version`: FileNotFoundError if absent, RegistryFileError if bad."""
        return _read_object(storage.join(self.version_uri(version), VERSION_FILE))

    def publish(
        self,
        model_dir: str | Path,
        extra: dict[str, Any] | None = None,
        content_hash: str | None = None,
    ) -> str:
        """Copy a local model folder in as a new version; returns its version.

        `content_hash` identifies the model (default: the folder's tree hash). A
        version with the same hash is returned instead of a new one, so a caller
        that adds per-publication files (a card, the time) passes the hash of the
        model alone. The version marker is written last, so a crash mid-copy never
        yields a version that looks complete.
        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise RegistryError(f"model folder not found: {model_dir}")
        content_hash = content_hash or storage.tree_hash(model_dir)
        for version in self.versions():
            if self.version_info(version).get("content_hash") == content_hash:
                return version
        info = {
            "name": self.name,
            "content_hash": content_hash,
            "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        if storage.is_gcs(self.root):
            version = str(int((self.versions() or ["0"])[-1]) + 1)
            info["version"] = version
            storage.upload_tree(model_dir, self.version_uri(version))
            storage.write_json(storage.join(self.version_uri(version), VERSION_FILE), info)
            return version
        return self._publish_local(model_dir, info)

    def _publish_local(self, model_dir: Path, info: dict[str, Any]) -> str:
        base = Path(self.base)
        # Built beside the versions; the rename below gives it the next free number.
        staging = storage.staging_dir(base / "version")
        try:
            shutil.copytree(model_dir, staging, dirs_exist_ok=True)
            while True:
                existing = [p.name for p in base.iterdir() if p.name.isdigit()]
                version = str(max((int(v) for v in existing), default=0) + 1)
                info["version"] = version
                storage.write_json(staging / VERSION_FILE, info)
                try:
                    # rename() onto an existing non-empty folder fails: a concurrent
                    # publisher took this number, so take the next one.
                    staging.rename(base / version)
                    return version
                except OSError:
                    if not (base / version).exists():
                        raise
        finally:
            storage.delete_tree(staging)

    def aliases(self) -> dict[str, str]:
        uri = storage.join(self.base, ALIASES_FILE)
        try:
            data = _read_object(uri)
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def set_alias(self, alias: str, version: str) -> None:
        """Point `alias` at `version`, replacing aliases.json atomically."""
        if version not in self.versions():
            raise RegistryError(f"{self.name} has no complete version {version!r}")
        aliases = self.aliases()
        aliases[alias] = version
        storage.write_json(storage.join(self.base, ALIASES_FILE), aliases)

    def resolve(self, alias_or_version: str) -> str:
        """The version an alias points at (a version number resolves to itself)."""
        if alias_or_version.isdigit():
            if alias_or_version not in self.versions():
                raise RegistryError(f"{self.name} has no version {alias_or_version}")
            return alias_or_version
        version = self.aliases().get(alias_or_version)
        if version is None:
            raise RegistryError(
                f"{self.name} has no {alias_or_version!r} alias under {self.root}; "
                "run the pipeline (`mega run`) to train and register a model"
            )
        return version
