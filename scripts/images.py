"""`make images`: build every image docker-compose.yml defines, tagged with the git sha.

Each service with a `build:` section (all profiles) is built by compose itself, so the
compose file stays the one definition of the images, as
mega-pipeline/<container>:<git sha, 12 characters> (`-dirty` added when the working tree
has changes, untracked files included). Then each image's size and build time is printed.

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


PODMAN_COMPOSE = Path(sys.executable).parent / "podman-compose"  # a dev dependency


def say(message: str) -> None:
    print(f"images: {message}", file=sys.stderr)


def engine() -> str:
    """docker or podman, as the module docstring says; exits 2 on a bad override."""
    chosen = os.environ.get("MEGA_CONTAINER_ENGINE", "")
    if chosen not in {"", "docker", "podman"}:
        say(f"MEGA_CONTAINER_ENGINE={chosen}: use docker or podman")
        sys.exit(2)
    if chosen:
        return chosen
    if not shutil.which("docker"):
        return "podman"
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0:
        return "docker"
    say("docker's engine does not answer (start it to build with docker): using podman")
    return "podman"


def compose_command(engine_name: str) -> list[str]:
    """The compose CLI for `engine_name`; for podman, podman made ready first (exits 1
    with ensure-podman's reason when it cannot be)."""
    if engine_name == "docker":
        return ["docker", "compose", "-f", str(COMPOSE_FILE), *PROFILES]
    ready = subprocess.run([str(REPO / "scripts/ensure-podman.sh")], check=False)
    if ready.returncode != 0:
        say("podman is not ready (the reason is above)")
        sys.exit(1)
    return [str(PODMAN_COMPOSE), "-f", str(COMPOSE_FILE), *PROFILES]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def head_commit() -> str:
    """The checked-out commit, in full: what the images record as GIT_SHA."""
    return _git("rev-parse", "HEAD")


def image_tag() -> str:
    """The commit's first 12 characters, `-dirty` when the working tree has changes."""
    sha = head_commit()[:12]
    # Untracked files count: the build context takes them (unless .dockerignore'd).
    return f"{sha}-dirty" if _git("status", "--porcelain") else sha


def build_environment(engine_name: str, tag: str, commit: str) -> dict[str, str]:
    """The environment compose builds in: the image tag and the commit for the images."""
    env = {**os.environ, "MEGA_IMAGE_TAG": tag, "GIT_SHA": commit}
    if engine_name == "podman":
        # podman's default OCI format drops HEALTHCHECK; Docker's format keeps it.
        env["BUILDAH_FORMAT"] = "docker"
    return env


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
    # The commit goes into the images too (GIT_SHA: a container has no .git to ask).
    env = build_environment(engine_name, tag, head_commit())
    rows = []
    for service, image in built_images(tag).items():
        say(f"building {image} ({service}) with {engine_name}")
        start = time.monotonic()
        built = subprocess.run(
            [*compose, "build", service], cwd=REPO, env=env, stdout=sys.stderr, check=False
        )
        if built.returncode != 0:
            say(f"building {service} failed (output above)")
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
