"""The containers tier: every image built with podman, the compose file run for real.

Needs root (podman as CI runs it, and bind-mounted folders handed to the containers'
users). scripts/ensure-podman.sh installs podman when it may and makes stand-in base
images on a machine that reaches no image registry; without root or podman the tier
is skipped with the reason. The sizes and build times of the images are printed at the
end of the run and written to test-output/containers/images.txt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from podman_support import PIPELINE_UID, BuiltImages, ComposeProject
from support import BIN, REPO, free_port, write_params

from workflow import images

REPORT = REPO / "test-output/containers/images.txt"
_summary: list[str] = []


@pytest.fixture(scope="session")
def podman() -> None:
    if os.geteuid() != 0:
        pytest.skip(
            "the containers tier runs as root (podman, bind mounts handed to the containers'"
            " users): sudo .venv/bin/pytest -m containers"
        )
    ready = subprocess.run(
        [str(REPO / "scripts/ensure-podman.sh")], capture_output=True, text=True, check=False
    )
    assert ready.returncode == 0, f"scripts/ensure-podman.sh failed:\n{ready.stderr}"


@pytest.fixture(scope="session")
def built_images(podman: None) -> BuiltImages:
    """`make images` with podman (`mega build` itself, as a user runs it)."""
    env = {**os.environ, "MEGA_CONTAINER_ENGINE": "podman"}
    result = subprocess.run(
        [str(BIN / "mega"), "build"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    tag = images.image_tag(REPO)
    table = result.stdout.strip()
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(table + "\n")
    _summary.append(table)
    built = {image.service: image.local(tag) for image in images.compose_images(REPO)}
    return BuiltImages(tag, images.head_commit(REPO), built, table, env)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for table in _summary:
        terminalreporter.write_sep("-", "container images (make images, podman)")
        terminalreporter.write_line(table)


@pytest.fixture(scope="module")
def compose_project(
    built_images: BuiltImages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComposeProject]:
    root = tmp_path_factory.mktemp("compose")
    shutil.copy(REPO / "docker-compose.yml", root)
    for linked in ("src", "requirements"):
        (root / linked).symlink_to(REPO / linked)
    write_params(root, {"train": {"tracking": "wandb"}})  # W&B offline, into ./.wandb
    for folder in ("data", "models", "reports", ".mega", ".wandb"):
        (root / folder).mkdir()
        os.chown(root / folder, PIPELINE_UID, PIPELINE_UID)
    env = {
        **built_images.env,
        "MEGA_IMAGE_TAG": built_images.tag,
        "MEGA_API_PORT": str(free_port()),
        "MEGA_FRONTEND_PORT": str(free_port()),
        "MEGA_UID": str(PIPELINE_UID),
        "MEGA_GID": str(PIPELINE_UID),
    }
    project = ComposeProject(root, env, name=f"mega-test-{os.getpid()}")
    yield project
    project.compose("--profile", "pipeline", "down", "--timeout", "5")
