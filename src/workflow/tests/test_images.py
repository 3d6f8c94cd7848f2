"""`mega build [--push]` against a fake engine: a `docker` on PATH that records its argv.

No image is built or pushed here (the containers tier builds them with podman; no
registry answers on this machine): these tests check the commands `mega build` gives the
engine, in order, and each way a build or push can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow.images import (
    GPU_TAG_SUFFIX,
    TRAINING_IMAGE,
    compose_images,
    image_tag,
    push_failure,
    remote_image,
)

REPO = Path(__file__).resolve().parents[3]
MEGA = Path(sys.executable).parent / "mega"
REPOSITORY = "registry.invalid/my-project/images"  # .invalid: never a real host
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]

# The engine: every call appended to $FAKE_LOG as a JSON list; `image inspect` prints a
# size; FAKE_FAIL=<subcommand> makes that subcommand print FAKE_ERROR and exit 1.
FAKE_ENGINE = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
step = args[0] if args[0] != "compose" else "build"
if step == os.environ.get("FAKE_FAIL"):
    sys.stderr.write(os.environ.get("FAKE_ERROR", "it failed") + "\\n")
    sys.exit(1)
if args[:2] == ["image", "inspect"]:
    print(250_000_000)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A committed checkout holding the repository's docker-compose.yml."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "docker-compose.yml", root)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "compose"], cwd=root, check=True)
    return root


@pytest.fixture
def engine_log(tmp_path: Path) -> Path:
    """Where the fake `docker` (first on PATH in `mega`'s environment) records its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(FAKE_ENGINE.format(python=sys.executable))
    fake.chmod(0o755)
    return tmp_path / "engine.log"


def mega_build(
    project: Path, engine_log: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MEGA_") and not key.startswith("FAKE_")
    }
    environment |= {
        "PATH": f"{engine_log.parent / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "FAKE_LOG": str(engine_log),
        "COLUMNS": "300",
        **env,
    }
    return subprocess.run(
        [str(MEGA), "build", *args],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def calls(engine_log: Path) -> list[list[str]]:
    if not engine_log.exists():
        return []
    return [json.loads(line) for line in engine_log.read_text().splitlines()]


def built_services(engine_log: Path) -> list[list[str]]:
    """The arguments after `build` of each compose build."""
    return [c[c.index("build") + 1 :] for c in calls(engine_log) if c[0] == "compose"]


def compose_built(project: Path) -> dict[str, str]:
    """Service → container of every service docker-compose.yml builds."""
    services = yaml.safe_load((project / "docker-compose.yml").read_text())["services"]
    return {
        name: spec["image"].split("/")[1].split(":")[0]
        for name, spec in services.items()
        if "build" in spec
    }


def test_build_builds_every_compose_image_with_the_commit_and_prints_the_table(
    project: Path, engine_log: Path
) -> None:
    tag = image_tag(project)
    result = mega_build(project, engine_log)
    assert result.returncode == 0, result.stderr
    assert [c for c in calls(engine_log) if c[0] == "info"], "docker's engine was asked"
    expected = compose_built(project)
    assert built_services(engine_log) == [[service] for service in expected]
    for service_call in (c for c in calls(engine_log) if c[0] == "compose"):
        assert service_call[1:3] == ["-f", str(project / "docker-compose.yml")]
        assert "--profile" in service_call and "cloud-sim" in service_call
    inspected = [c[-1] for c in calls(engine_log) if c[:2] == ["image", "inspect"]]
    assert inspected == [f"mega-pipeline/{c}:{tag}" for c in expected.values()]
    for container in expected.values():
        assert f"mega-pipeline/{container}:{tag}" in result.stdout
    assert "250 MB" in result.stdout
    assert f"MEGA_IMAGE_TAG={tag} docker compose up" in result.stdout
    assert not [c for c in calls(engine_log) if c[0] in {"tag", "push"}], "nothing pushed"


def test_build_passes_the_tag_and_commit_to_compose(
    project: Path, engine_log: Path, tmp_path: Path
) -> None:
    # The fake records argv only: a wrapper records what compose is given in its env.
    fake = engine_log.parent / "bin" / "docker"
    recorder = tmp_path / "env.log"
    fake.write_text(
        fake.read_text() + f"if args[0] == 'compose':\n    open({str(recorder)!r}, 'a').write("
        "os.environ['MEGA_IMAGE_TAG'] + ' ' + os.environ['GIT_SHA'] + '\\n')\n"
    )
    result = mega_build(project, engine_log)
    assert result.returncode == 0, result.stderr
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True
    ).stdout.strip()
    lines = set(recorder.read_text().splitlines())
    assert lines == {f"{commit[:12]} {commit}"}


def test_push_tags_and_pushes_every_image_but_the_emulators(
    project: Path, engine_log: Path
) -> None:
    tag = image_tag(project)
    result = mega_build(project, engine_log, "--push", MEGA_IMAGE_REPOSITORY=REPOSITORY)
    assert result.returncode == 0, result.stderr
    pushed_containers = [
        image.container for image in compose_images(project) if not image.local_only
    ]
    assert "storage-emulator" not in pushed_containers  # the cloud-sim profile's own
    assert {"api-service", "frontend", TRAINING_IMAGE} <= set(pushed_containers)
    expected: list[list[str]] = []
    for container in pushed_containers:
        remote = remote_image(REPOSITORY, container, tag)
        expected += [["tag", f"mega-pipeline/{container}:{tag}", remote], ["push", remote]]
    # Every build first, then the pushes: nothing is pushed if any build fails.
    after_builds = [c for c in calls(engine_log) if c[0] in {"tag", "push"}]
    assert after_builds == expected
    first_push = next(i for i, c in enumerate(calls(engine_log)) if c[0] == "tag")
    assert all(c[0] != "compose" for c in calls(engine_log)[first_push:])
    for container in pushed_containers:
        assert remote_image(REPOSITORY, container, tag) in result.stdout


def test_gpu_builds_the_training_image_again_for_gpus(project: Path, engine_log: Path) -> None:
    tag = image_tag(project)
    result = mega_build(
        project, engine_log, "--gpu", "--push", MEGA_IMAGE_REPOSITORY=REPOSITORY + "/"
    )
    assert result.returncode == 0, result.stderr
    [train] = [s for s, c in compose_built(project).items() if c == TRAINING_IMAGE]
    assert built_services(engine_log)[-1] == ["--build-arg", "ACCELERATOR=gpu", train]
    gpu_tag = tag + GPU_TAG_SUFFIX
    assert [c[-1] for c in calls(engine_log) if c[:2] == ["image", "inspect"]][-1] == (
        f"mega-pipeline/{TRAINING_IMAGE}:{gpu_tag}"
    )
    assert ["push", f"{REPOSITORY}/{TRAINING_IMAGE}:{gpu_tag}"] in calls(engine_log)
    assert f"mega-pipeline/{TRAINING_IMAGE}:{gpu_tag}" in result.stdout


@pytest.mark.parametrize(
    ("repository", "words"),
    [
        (None, "MEGA_IMAGE_REPOSITORY is not set"),
        ("https://registry.invalid/p/r", "is not a repository URI"),
        ("registry.invalid", "is not a repository URI"),
        ("Registry.invalid/P/R", "is not a repository URI"),
        ("registry.invalid/p/r:v1", "is not a repository URI"),
    ],
)
def test_push_without_a_usable_repository_fails_before_any_build(
    project: Path, engine_log: Path, repository: str | None, words: str
) -> None:
    env = {"MEGA_IMAGE_REPOSITORY": repository} if repository else {}
    result = mega_build(project, engine_log, "--push", **env)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("mega: error: ") and words in line
    assert "gcloud artifacts repositories describe REPO --location REGION" in line
    assert calls(engine_log) == []


def test_changes_outside_the_build_inputs_leave_the_tag_clean(project: Path) -> None:
    """params.yaml, docs or dvc.lock go into no image: the commit's images are these."""
    clean = image_tag(project)
    (project / "params.yaml").write_text("train: {epochs: 2}\n")
    (project / "docs").mkdir()
    (project / "docs/notes.md").write_text("notes\n")
    assert image_tag(project) == clean
    (project / "docker-compose.yml").write_text("services: {}\n")
    assert image_tag(project) == f"{clean}-dirty"


def test_push_of_a_dirty_tree_is_refused_unless_allowed(project: Path, engine_log: Path) -> None:
    (project / "src").mkdir()
    (project / "src/notes.txt").write_text("untracked files go into the build context\n")
    tag = image_tag(project)
    assert tag.endswith("-dirty")
    result = mega_build(project, engine_log, "--push", MEGA_IMAGE_REPOSITORY=REPOSITORY)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "what the images are built from has changes" in line and "--allow-dirty" in line
    assert calls(engine_log) == []
    result = mega_build(
        project, engine_log, "--push", "--allow-dirty", MEGA_IMAGE_REPOSITORY=REPOSITORY
    )
    assert result.returncode == 0, result.stderr
    assert ["push", remote_image(REPOSITORY, "api-service", tag)] in calls(engine_log)
    # A local build of a dirty tree is fine: it is tagged so.
    engine_log.unlink()
    assert mega_build(project, engine_log).returncode == 0
    assert f"mega-pipeline/api-service:{tag}" in [c[-1] for c in calls(engine_log)]


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            "unauthorized: authentication failed",
            ["may not push there", "gcloud auth configure-docker registry.invalid"],
        ),
        (
            'denied: Permission "artifactregistry.repositories.uploadArtifacts" denied on '
            "resource (or it may not exist)",
            ["may not push there", "the repository exists", "roles/artifactregistry.writer"],
        ),
        (
            'name unknown: Repository "images" not found',
            ["does not exist", "gcloud artifacts repositories create REPO"],
        ),
        (
            "dial tcp: lookup registry.invalid: no such host",
            ["registry.invalid does not answer"],
        ),
        ("something else entirely", ["something else entirely", "MEGA_IMAGE_REPOSITORY"]),
    ],
)
def test_a_failed_push_is_one_line_naming_artifact_registry_and_the_fix(
    project: Path, engine_log: Path, error: str, words: list[str]
) -> None:
    result = mega_build(
        project,
        engine_log,
        "--push",
        MEGA_IMAGE_REPOSITORY=REPOSITORY,
        FAKE_FAIL="push",
        FAKE_ERROR=error,
    )
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("mega: error: pushing ") and "to Artifact Registry failed" in last
    for word in words:
        assert word in last
    assert error in result.stderr  # the engine's own words are shown too
    assert len([c for c in calls(engine_log) if c[0] == "push"]) == 1, "stops at the first"


def test_podman_is_told_to_log_in_its_own_way() -> None:
    line = push_failure("podman", f"{REPOSITORY}/frontend:abc", "unauthorized: no")
    assert "podman login -u oauth2accesstoken --password-stdin registry.invalid" in line
    assert "configure-docker" not in line


def test_a_failed_build_stops_with_one_line_and_pushes_nothing(
    project: Path, engine_log: Path
) -> None:
    result = mega_build(
        project,
        engine_log,
        "--push",
        MEGA_IMAGE_REPOSITORY=REPOSITORY,
        FAKE_FAIL="build",
        FAKE_ERROR="no space left on device",
    )
    assert result.returncode == 1
    first = next(iter(compose_built(project)))
    assert result.stderr.splitlines()[-1] == (
        f"mega: error: building {first} failed (the output is above)"
    )
    assert "no space left on device" in result.stderr
    assert len(built_services(engine_log)) == 1
    assert not [c for c in calls(engine_log) if c[0] in {"tag", "push"}]


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        ("engine", "MEGA_CONTAINER_ENGINE=rkt: use docker or podman"),
        ("no-git", "is not a git checkout"),
        ("no-compose", "no docker-compose.yml in"),
        ("no-docker", "MEGA_CONTAINER_ENGINE=docker, but there is no docker on PATH"),
    ],
)
def test_bad_setups_fail_in_one_line_before_any_build(
    project: Path, engine_log: Path, setup: str, words: str
) -> None:
    env = {}
    if setup == "engine":
        env["MEGA_CONTAINER_ENGINE"] = "rkt"
    elif setup == "no-docker":
        # Only git on PATH: neither the fake engine nor any docker of the machine.
        tools = project.parent / "tools"
        tools.mkdir()
        (tools / "git").symlink_to(shutil.which("git") or "git")
        env |= {"MEGA_CONTAINER_ENGINE": "docker", "PATH": str(tools)}
    elif setup == "no-git":
        shutil.rmtree(project / ".git")
    else:
        (project / "docker-compose.yml").unlink()
    result = mega_build(project, engine_log, **env)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("mega: error: ") and words in line
    assert calls(engine_log) == []


def test_a_service_built_under_another_name_is_refused(project: Path, engine_log: Path) -> None:
    compose = project / "docker-compose.yml"
    compose.write_text(compose.read_text().replace("mega-pipeline/frontend", "acme/frontend"))
    result = mega_build(project, engine_log)
    assert result.returncode == 2
    assert "service frontend runs acme/frontend" in result.stderr


@pytest.mark.parametrize("prepared", [False, True])
def test_without_an_answering_docker_podman_is_prepared_first(
    project: Path, engine_log: Path, prepared: bool
) -> None:
    if prepared:
        (project / "scripts").mkdir()
        script = project / "scripts/ensure-podman.sh"
        script.write_text("#!/bin/sh\necho 'podman: not installed and not root' >&2\nexit 1\n")
        script.chmod(0o755)
    result = mega_build(project, engine_log, FAKE_FAIL="info", FAKE_ERROR="no daemon")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "build: docker's engine does not answer (start it to build with docker): using podman"
    )
    if prepared:
        assert lines[1:] == [
            "podman: not installed and not root",
            "mega: error: podman is not ready (the reason is above)",
        ]
    else:
        assert lines[1] == (
            "mega: error: no scripts/ensure-podman.sh to prepare podman; run mega build from "
            "the project root"
        )
    assert [c[0] for c in calls(engine_log)] == ["info"]
