"""Helpers of the containers tier (tests/containers): built images, compose projects."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from workflow import images

# The pipeline containers run as this uid, which is in no image's /etc/passwd: as on a
# Linux host where MEGA_UID=$(id -u) hands the containers the user's own folders.
PIPELINE_UID = 4242


@dataclass
class BuiltImages:
    """What `make images` (`mega build`) built: service → image name, and its printed table."""

    tag: str
    commit: str
    images: dict[str, str]
    table: str
    env: dict[str, str] = field(default_factory=dict)

    def run(self, image: str, *command: str, entrypoint: str = "python") -> str:
        """stdout of `command` run in a throw-away container of `image`."""
        result = subprocess.run(
            ["podman", "run", "--rm", "--entrypoint", entrypoint, image, *command],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


def distributions(built: BuiltImages, image: str) -> dict[str, str]:
    """Normalised distribution name → version of every Python distribution in `image`."""
    code = (
        "import importlib.metadata as m, json, re; print(json.dumps({re.sub(r'[-_.]+', '-', "
        "d.metadata['Name']).lower(): d.version for d in m.distributions()}))"
    )
    return json.loads(built.run(image, "-c", code))


@dataclass
class ComposeProject:
    """A project folder of the test's own for docker-compose.yml, run by podman-compose.

    The compose file is copied as it is; src/ and requirements/ are linked (build
    contexts); data/, models/ and reports/ start empty, owned by `uid`.
    """

    root: Path
    env: dict[str, str]
    name: str

    def compose(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(images.PODMAN_COMPOSE), "-p", self.name, *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run_podman(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
