"""The images: their names and tags, building them (`mega build`) and pushing them.

Locally compose names each image `mega-pipeline/<container>:<tag>`; pushed, the same
image is `<MEGA_IMAGE_REPOSITORY>/<container>:<tag>`. The tag is the commit's first 12
characters, with `-dirty` when what the images are built from has changes, so a job spec names the
exact code it runs.

docker-compose.yml stays the one definition of the images: every service with a `build:`
section (all profiles) is built by compose itself, with the tag and the commit
(`GIT_SHA`, which the images record: a container has no .git to ask). The engine is
MEGA_CONTAINER_ENGINE (docker or podman); else docker when a Docker engine answers; else
podman, which scripts/ensure-podman.sh prepares (packages, settings, and stand-in base
images on a machine that reaches no image registry). cloudbuild.yaml builds the pushed
images on Cloud Build from the same Dockerfiles, targets and build arguments (a test
keeps the two files agreeing).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from common.cli import EXIT_USAGE, fail

LOCAL_REPOSITORY = "mega-pipeline"
TRAINING_IMAGE = "model-training"
# The training image built with ACCELERATOR=gpu (TensorFlow's CUDA wheels) is tagged
# `<tag>-gpu` (src/model-training/README.md).
GPU_TAG_SUFFIX = "-gpu"
# The tag of a tree whose build inputs have changes: it names no commit's code.
DIRTY_SUFFIX = "-dirty"

COMPOSE_FILE = "docker-compose.yml"
PROFILES = ["--profile", "pipeline", "--profile", "cloud-sim"]
# The profile that rehearses the cloud offline (a Cloud Storage emulator): its images
# are built for local use only and never pushed.
LOCAL_ONLY_PROFILE = "cloud-sim"
TAG_VARIABLE = re.compile(r"\$\{MEGA_IMAGE_TAG(:-[^}]*)?\}")
PODMAN_COMPOSE = Path(sys.executable).parent / "podman-compose"  # a dev dependency
# An Artifact Registry registryUri: host/project/repository, lowercase, no scheme or tag.
REPOSITORY_URI = re.compile(r"[a-z0-9.-]+(:\d+)?(/[a-z0-9._-]+)+/?")
# A tag as image registries take it.
IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
REPOSITORY_HINT = (
    "set it to the repository's registryUri, which "
    "`gcloud artifacts repositories describe REPO --location REGION --format "
    "'value(registryUri)'` prints (docs/cloud.md, Images in Artifact Registry)"
)

Say = Callable[[str], None]


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


def head_commit(root: Path) -> str:
    """The checked-out commit of the repository at `root`, in full."""
    return _git(root, "rev-parse", "HEAD")


def commit_label(root: Path) -> str:
    """The checked-out commit's first 12 characters; `unknown` outside a git checkout."""
    try:
        return head_commit(root)[:12]
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


# What the images are built from (src/Dockerfile and src/frontend/Dockerfile copy only
# src/ and requirements/; compose holds the emulator's inline Dockerfile): a change
# elsewhere (params.yaml, docs, dvc.lock) leaves every image as the commit builds it.
BUILD_INPUTS = ("src", "requirements", "docker-compose.yml", ".dockerignore")


def image_tag(root: Path) -> str:
    """The commit's first 12 characters, `-dirty` when what the images are built from
    (BUILD_INPUTS) has changes, untracked files included."""
    sha = head_commit(root)[:12]
    changed = _git(root, "status", "--porcelain", "--", *BUILD_INPUTS)
    return f"{sha}{DIRTY_SUFFIX}" if changed else sha


def remote_image(repository: str, container: str, tag: str) -> str:
    """`container`'s image at `tag` in the Artifact Registry `repository` (its registryUri)."""
    return f"{repository.rstrip('/')}/{container}:{tag}"


def repository_problem(repository: str) -> str | None:
    """What is wrong with a MEGA_IMAGE_REPOSITORY value, or None when it is a registryUri."""
    if REPOSITORY_URI.fullmatch(repository):
        return None
    return (
        f"MEGA_IMAGE_REPOSITORY={repository} is not a repository URI "
        f"(host/project/repository, lowercase, no scheme or tag): {REPOSITORY_HINT}"
    )


def tag_problem(tag: str) -> str | None:
    """What is wrong with an image tag (`--image-tag`), or None when an image can have it."""
    if IMAGE_TAG.fullmatch(tag):
        return None
    return (
        f"--image-tag {tag!r} is not an image tag (letters, digits, `_`, `.` and `-`, at most "
        "128, not starting with `.` or `-`); pass the tag `mega build` printed"
    )


def check_repository(repository: str | None) -> str:
    """MEGA_IMAGE_REPOSITORY as given; exits 2 with how to get it when unset or malformed."""
    if not repository:
        fail(f"MEGA_IMAGE_REPOSITORY is not set: {REPOSITORY_HINT}", EXIT_USAGE)
    if problem := repository_problem(repository):
        fail(problem, EXIT_USAGE)
    return repository


# --- which images -------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """An image docker-compose.yml builds: the service that builds it and its names."""

    service: str
    container: str  # the name under LOCAL_REPOSITORY and under MEGA_IMAGE_REPOSITORY
    local_only: bool  # of the cloud-sim profile only: never pushed

    def local(self, tag: str) -> str:
        return f"{LOCAL_REPOSITORY}/{self.container}:{tag}"


def compose_services(root: Path) -> dict[str, dict[str, object]]:
    """docker-compose.yml's services; exits 2 when `root` has no compose file."""
    path = root / COMPOSE_FILE
    if not path.is_file():
        fail(f"no {COMPOSE_FILE} in {root}; run mega build from the project root", EXIT_USAGE)
    services: dict[str, dict[str, object]] = yaml.safe_load(path.read_text())["services"]
    return services


def service_container(service: str, spec: dict[str, object]) -> str:
    """The container a compose service runs: `model-training` for
    `mega-pipeline/model-training:${MEGA_IMAGE_TAG:-dev}`; exits 2 for another name."""
    name = TAG_VARIABLE.sub("", str(spec.get("image", ""))).rstrip(":")
    repository, _, container = name.rpartition("/")
    if repository != LOCAL_REPOSITORY:
        fail(
            f"{COMPOSE_FILE}: service {service} runs {name or 'no image'}; name it "
            f"{LOCAL_REPOSITORY}/<container>:${{MEGA_IMAGE_TAG:-dev}} like the others",
            EXIT_USAGE,
        )
    return container


def compose_images(root: Path) -> list[Image]:
    """Every image docker-compose.yml builds, in its order (each once)."""
    images = []
    for service, spec in compose_services(root).items():
        if "build" not in spec:
            continue
        container = service_container(service, spec)
        profiles = spec.get("profiles") or []
        local_only = isinstance(profiles, list) and profiles == [LOCAL_ONLY_PROFILE]
        images.append(Image(service, container, local_only))
    return images


def training_image(images: list[Image]) -> Image:
    """The image of TRAINING_IMAGE (the one built again for GPUs with --gpu)."""
    [image] = [image for image in images if image.container == TRAINING_IMAGE]
    return image


# --- the engine ---------------------------------------------------------------------


def engine(say: Say) -> str:
    """docker or podman, as the module docstring says; exits 2 on a bad override."""
    chosen = os.environ.get("MEGA_CONTAINER_ENGINE", "")
    if chosen not in {"", "docker", "podman"}:
        fail(f"MEGA_CONTAINER_ENGINE={chosen}: use docker or podman", EXIT_USAGE)
    if chosen == "docker" and not shutil.which("docker"):
        # podman is installed by ensure-podman.sh when it may; Docker never is.
        fail(
            "MEGA_CONTAINER_ENGINE=docker, but there is no docker on PATH: install Docker, "
            "or unset the setting to build with podman",
            EXIT_USAGE,
        )
    if chosen:
        return chosen
    if not shutil.which("docker"):
        return "podman"
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0:
        return "docker"
    say("docker's engine does not answer (start it to build with docker): using podman")
    return "podman"


def compose_command(engine_name: str, root: Path) -> list[str]:
    """The compose CLI for `engine_name`; for podman, podman made ready first (exits 1
    with ensure-podman's reason when it cannot be)."""
    compose_file = str(root / COMPOSE_FILE)
    if engine_name == "docker":
        return ["docker", "compose", "-f", compose_file, *PROFILES]
    prepare = root / "scripts/ensure-podman.sh"
    if not prepare.is_file():
        where = prepare.relative_to(root)
        fail(f"no {where} to prepare podman; run mega build from the project root")
    ready = subprocess.run([str(prepare)], check=False)
    if ready.returncode != 0:
        fail("podman is not ready (the reason is above)")
    return [str(PODMAN_COMPOSE), "-f", compose_file, *PROFILES]


def build_environment(engine_name: str, tag: str, commit: str) -> dict[str, str]:
    """The environment compose builds in: the image tag and the commit for the images."""
    env = {**os.environ, "MEGA_IMAGE_TAG": tag, "GIT_SHA": commit}
    if engine_name == "podman":
        # podman's default OCI format drops HEALTHCHECK; Docker's format keeps it.
        env["BUILDAH_FORMAT"] = "docker"
    return env


# --- building -----------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """One image built: its local name, size in megabytes and build time in seconds."""

    image: str
    megabytes: float
    seconds: float


def build_one(
    engine_name: str,
    compose: list[str],
    root: Path,
    image: Image,
    tag: str,
    say: Say,
    *build_args: str,
) -> Built:
    """Build `image` as `tag` through compose (`build_args`: extra KEY=VALUE); exits 1 on
    a failed build, the engine's output above."""
    env = build_environment(engine_name, tag, head_commit(root))
    name = image.local(tag)
    say(f"building {name} ({image.service}) with {engine_name}")
    extra = [arg for pair in build_args for arg in ("--build-arg", pair)]
    start = time.monotonic()
    built = subprocess.run(
        [*compose, "build", *extra, image.service],
        cwd=root,
        env=env,
        stdout=sys.stderr,
        check=False,
    )
    if built.returncode != 0:
        fail(f"building {image.service} failed (the output is above)")
    seconds = time.monotonic() - start
    size = subprocess.run(
        [engine_name, "image", "inspect", "--format", "{{.Size}}", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if size.returncode != 0 or not size.stdout.strip().isdigit():
        fail(f"{engine_name} built {image.service} but has no image {name}: {size.stderr.strip()}")
    return Built(name, int(size.stdout.strip()) / 1e6, seconds)


def table(rows: list[Built]) -> str:
    """The size and build time of each image, as `make images` prints them."""
    lines = [f"{'image':<52} {'size':>9} {'build':>8}"]
    lines += [f"{r.image:<52} {r.megabytes:>6.0f} MB {r.seconds:>7.0f}s" for r in rows]
    return "\n".join(lines)


# --- pushing ------------------------------------------------------------------------

# What an engine prints when a push is refused, and what the user does about it.
_DENIED = re.compile(r"unauthori[sz]ed|denied|authenticat|forbidden|\b40[13]\b|credential", re.I)
_MISSING = re.compile(r"not found|name unknown|\b404\b|does not exist", re.I)
_UNREACHABLE = re.compile(
    r"no such host|dial tcp|connection refused|timed? ?out|network is unreachable", re.I
)


def push_failure(engine_name: str, remote: str, output: str) -> str:
    """One line: why pushing `remote` to Artifact Registry failed (from the engine's
    `output`), and the fix."""
    host = remote.split("/", 1)[0]
    repository = remote.rsplit("/", 1)[0]
    last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")
    said = f"pushing {remote} to Artifact Registry failed ({engine_name}: {last or 'no output'})"
    if _MISSING.search(output):
        return (
            f"{said}: the repository {repository} does not exist; create it "
            "(`gcloud artifacts repositories create REPO --repository-format docker "
            "--location REGION`) or fix MEGA_IMAGE_REPOSITORY"
        )
    if _DENIED.search(output):
        login = (
            f"`gcloud auth print-access-token | podman login -u oauth2accesstoken "
            f"--password-stdin {host}`"
            if engine_name == "podman"
            else f"`gcloud auth configure-docker {host}`"
        )
        return (
            f"{said}: {engine_name} may not push there; log it in to the registry with "
            f"{login}, and check that the repository exists and your account may write to "
            "it (roles/artifactregistry.writer)"
        )
    if _UNREACHABLE.search(output):
        return f"{said}: {host} does not answer; check the network and MEGA_IMAGE_REPOSITORY"
    return f"{said}; check MEGA_IMAGE_REPOSITORY and that {engine_name} is logged in to {host}"


def push(engine_name: str, local: str, remote: str, say: Say) -> None:
    """Tag `local` as `remote` and push it; exits 1 with `push_failure`'s line."""
    say(f"pushing {remote}")
    tagged = subprocess.run(
        [engine_name, "tag", local, remote], capture_output=True, text=True, check=False
    )
    if tagged.returncode != 0:
        fail(f"{engine_name} tag {local} {remote} failed: {tagged.stderr.strip()}")
    # Progress goes on to the user; the error text is kept to say what went wrong.
    pushed = subprocess.run(
        [engine_name, "push", remote],
        stdout=sys.stderr,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if pushed.returncode != 0:
        sys.stderr.write(pushed.stderr)
        fail(push_failure(engine_name, remote, pushed.stderr))


# --- mega build ---------------------------------------------------------------------


@dataclass
class BuildResult:
    """What `build_all` did: the tag, the images built and the remote names pushed."""

    tag: str
    built: list[Built]
    pushed: list[str]


def build_all(
    root: Path,
    say: Say,
    *,
    gpu: bool = False,
    repository: str | None = None,
    allow_dirty: bool = False,
) -> BuildResult:
    """Build every compose image tagged `image_tag(root)`; with `gpu` also the training
    image for GPUs (`<tag>-gpu`); with `repository` push every image but the cloud-sim
    profile's to it.

    Everything a user can get wrong (the repository, a dirty tree for a push, the engine
    setting, not a git checkout) fails with one line (exit 2) before any build.
    """
    images = compose_images(root)
    if repository is not None:
        repository = check_repository(repository)
    try:
        tag = image_tag(root)
    except (subprocess.CalledProcessError, FileNotFoundError):
        fail(f"{root} is not a git checkout: the images are tagged with its commit", EXIT_USAGE)
    if repository and tag.endswith("-dirty") and not allow_dirty:
        fail(
            "what the images are built from has changes (`git status src requirements`): a "
            "pushed image must name the exact "
            "code it holds; commit or stash them, or pass --allow-dirty to push "
            f"{tag} images",
            EXIT_USAGE,
        )
    engine_name = engine(say)
    compose = compose_command(engine_name, root)
    built = [build_one(engine_name, compose, root, image, tag, say) for image in images]
    wanted = [(image, tag) for image in images]
    if gpu:
        training = training_image(images)
        gpu_tag = tag + GPU_TAG_SUFFIX
        built.append(
            build_one(engine_name, compose, root, training, gpu_tag, say, "ACCELERATOR=gpu")
        )
        wanted.append((training, gpu_tag))
    pushed = []
    if repository:
        for image, image_tag_ in wanted:
            if image.local_only:
                continue
            remote = remote_image(repository, image.container, image_tag_)
            push(engine_name, image.local(image_tag_), remote, say)
            pushed.append(remote)
    return BuildResult(tag, built, pushed)
