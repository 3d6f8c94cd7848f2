"""Facts about the project in the current folder: stages, params, reports, registry."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common import storage
from common.contracts import METRICS, STATS, Metrics, Stats
from common.params import PipelineParams, load_params
from common.registry import ModelRegistry, RegistryError
from common.services import ServiceError
from common.settings import Settings


class ProjectError(RuntimeError):
    """The current folder is not a usable pipeline project."""


def dvc_error(output: str, default: str) -> str:
    """The reason in dvc's output: its last `ERROR: <reason>` line, without the prefix;
    `default` when it printed none (killed, or a crash that left only a traceback)."""
    lines = [line for line in output.splitlines() if line.startswith("ERROR")]
    if not lines:
        return default
    return lines[-1].removeprefix("ERROR").removeprefix(":").strip() or default


@dataclass(frozen=True)
class RegisteredModel:
    """A registry version, behind an alias (`production`, `candidate`)."""

    name: str
    version: str
    uri: str  # the version's folder or gs:// prefix
    metrics: Metrics | None  # None for a version published without metrics.json


@dataclass
class Project:
    root: Path
    settings: Settings

    @classmethod
    def here(cls, settings: Settings) -> Project:
        root = Path.cwd()
        if not (root / "dvc.yaml").is_file():
            raise ProjectError(
                f"no dvc.yaml in {root}; run mega from the project root (the folder with dvc.yaml)"
            )
        return cls(root=root, settings=settings)

    @property
    def params(self) -> PipelineParams:
        return load_params(self.root / "params.yaml")

    def stages(self) -> list[str]:
        """Stage names in the order dvc.yaml lists them."""
        return list(yaml.safe_load((self.root / "dvc.yaml").read_text())["stages"])

    @property
    def processed_dir(self) -> Path:
        return self.root / "data" / "processed" / self.params.dataset

    @property
    def metrics_path(self) -> Path:
        return self.root / "reports" / METRICS

    def data_stats(self) -> Stats | None:
        path = self.processed_dir / STATS
        return Stats.read(path) if path.is_file() else None

    def metrics(self) -> Metrics | None:
        return Metrics.read(self.metrics_path) if self.metrics_path.is_file() else None

    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.settings.models_root, self.params.registry.model_name)

    def aliased(self, alias: str) -> RegisteredModel | None:
        """The name, folder and metrics of the version `alias` names, if one exists."""
        registry = self.registry()
        try:
            version = registry.resolve(alias)
            registry.version_info(version)  # a version whose folder was deleted is none
        except (RegistryError, FileNotFoundError):
            return None  # no alias yet, or it names a version that was deleted
        metrics = registry.read_document(version, METRICS, Metrics)
        return RegisteredModel(registry.name, version, registry.version_uri(version), metrics)

    def production(self) -> RegisteredModel | None:
        """The production version, if one exists."""
        return self.aliased("production")

    def candidate(self) -> RegisteredModel | None:
        """The version the gate last kept as candidate, if its number is above
        production's (a lower one was superseded by production)."""
        aliases = self.registry().aliases()
        kept, production = aliases.get("candidate", ""), aliases.get("production", "")
        if not kept.isdigit() or (production.isdigit() and int(kept) <= int(production)):
            return None
        return self.aliased("candidate")

    def locked_stages(self) -> list[str]:
        """Stages that dvc.lock records (that have run and been locked)."""
        lock = self.root / "dvc.lock"
        if not lock.is_file():
            return []
        return list((yaml.safe_load(lock.read_text()) or {}).get("stages", {}))

    def dvc(self, *args: str, capture: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the dvc CLI of this environment in the project root."""
        return subprocess.run(
            [sys.executable, "-m", "dvc", *args],
            cwd=self.root,
            capture_output=capture,
            text=True,
            check=False,
        )

    def remote_url(self, name: str | None = None) -> str | None:
        """The URL of DVC remote `name` (default: the default remote), if configured."""
        from dvc.config import Config, ConfigError

        try:
            config = Config(dvc_dir=str(self.root / ".dvc"))
        except ConfigError:
            return None  # dvc itself will say what is wrong with its config
        remote = name or config["core"].get("remote")
        settings = config["remote"].get(remote) if remote else None
        if not settings:
            return None
        if settings.get("credentialpath"):
            # dvc-gs uses that key file, which the probe does not: nothing to check
            # that dvc would see the same way.
            return None
        return str(settings["url"])

    def check_remote(self, name: str | None = None) -> None:
        """Fail in seconds, in one line, when a gs:// DVC remote cannot be reached.

        dvc-gs (gcsfs) retries an unreachable bucket for about 40 s and prints every
        retry's traceback. A refusal of the credentials is left to dvc: it may still
        read a public bucket anonymously.
        """
        url = self.remote_url(name)
        if url is None or not storage.is_gcs(url):
            return
        try:
            storage.probe(url)
        except ServiceError as exc:
            if not exc.denied:
                raise

    def stale_stages(self, *stages: str) -> dict[str, Any]:
        """`dvc status` as a dict: stage → what changed (empty when all is up to date);
        with `stages`, of those stages alone (their own dependencies, not upstream ones)."""
        result = self.dvc("status", "--json", *stages)
        if result.returncode != 0:
            raise ProjectError(
                f"dvc status failed: {result.stderr.strip() or result.stdout.strip()}"
            )
        text = result.stdout.strip()
        status: dict[str, Any] = json.loads(text) if text else {}
        return status
