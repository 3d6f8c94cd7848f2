"""`make images`: build every image docker-compose.yml defines, tagged with the git sha.

Each service with a `build:` section (all profiles) is built by compose itself, so the
compose file stays the one definition of the images, as
mega-pipeline/<container>:<git sha, 12 characters> (`-dirty` added when tracked files have
uncommitted changes). Then each image's size and build time is printed.

Engine: MEGA_CONTAINER_ENGINE (docker or podman); else docker when a Docker engine
answers; else podman, which scripts/ensure-podman.sh prepares (packages, settings, and
stand-in base images on a machine that reaches no image registry).
Run the stack on the images: MEGA_IMAGE_TAG=<tag> docker compose up.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
PROFILES = ["--profile", "pipeline", "--profile", "cloud-sim"]
TAG_VARIABLE = re.compile(r"\$\{MEGA_IMAGE_TAG(:-[^}]*)?\}")


def engine() -> str:
    """docker or podman, as the module docstring says; exits 2 on a bad override."""
    chosen = os.environ.get("MEGA_CONTAINER_ENGINE", "")
    if not chosen:
        docker_up = (
            shutil.which("docker")
            and subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
        )
        chosen = "docker" if docker_up else "podman"
    if chosen not in {"docker", "podman"}:
        sys.exit(f"images: MEGA_CONTAINER_ENGINE={chosen}: use docker or podman")
    return chosen


def compose_command(engine_name: str) -> list[str]:
    if engine_name == "docker":
        return ["docker", "compose", "-f", str(COMPOSE_FILE), *PROFILES]
    subprocess.run([str(REPO / "scripts/ensure-podman.sh")], check=True)
    podman_compose = Path(sys.executable).parent / "podman-compose"
    return [str(podman_compose), "-f", str(COMPOSE_FILE), *PROFILES]


def image_tag() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()

    sha = git("rev-parse", "--short=12", "HEAD")
    return f"{sha}-dirty" if git("status", "--porcelain", "--untracked-files=no") else sha


def built_images(tag: str) -> dict[str, str]:
    """Service name → image name with `tag`, for every service compose builds."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return {
        name: TAG_VARIABLE.sub(tag, service["image"])
        for name, service in services.items()
        if "build" in service
    }


def main() -> int:
    engine_name = engine()
    compose = compose_command(engine_name)
    tag = image_tag()
    env = {**os.environ, "MEGA_IMAGE_TAG": tag, "GIT_SHA": tag}
    rows = []
    for service, image in built_images(tag).items():
        print(f"images: building {image} ({service}) with {engine_name}", file=sys.stderr)
        start = time.monotonic()
        built = subprocess.run(
            [*compose, "build", service], cwd=REPO, env=env, stdout=sys.stderr, check=False
        )
        if built.returncode != 0:
            print(f"images: building {service} failed (output above)", file=sys.stderr)
            return 1
        seconds = time.monotonic() - start
        size = subprocess.run(
            [engine_name, "image", "inspect", "--format", "{{.Size}}", image],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        rows.append((image, int(size) / 1e6, seconds))
    print(f"\n{'image':<52} {'size':>9} {'build':>8}")
    for image, megabytes, seconds in rows:
        print(f"{image:<52} {megabytes:>6.0f} MB {seconds:>7.0f}s")
    print(f"\nrun them: MEGA_IMAGE_TAG={tag} docker compose up (or podman-compose)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
