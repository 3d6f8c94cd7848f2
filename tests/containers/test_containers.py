"""Every image builds with podman; the compose file's pipeline and stack run for real."""

from __future__ import annotations

import json
import re
import subprocess
import time
from graphlib import TopologicalSorter

import httpx
import pytest
import yaml
from dockerfiles import dockerfile_stages, stage_instruction
from podman_support import (
    PIPELINE_UID,
    BuiltImages,
    ComposeProject,
    distributions,
)
from support import REPO, lock_pins

from workflow import images

pytestmark = [pytest.mark.containers, pytest.mark.slow]

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
# Distributions of the repository itself, installed from src/ (never from an index).
LOCAL = set((REPO / "requirements/local-packages.txt").read_text().split())


def python_images(built: BuiltImages) -> dict[str, str]:
    return {service: image for service, image in built.images.items() if "frontend" not in image}


def base_image(service: str) -> str:
    """The image `service` is built FROM (its Dockerfile's first stage, or inline)."""
    build = SERVICES[service]["build"]
    text = build.get("dockerfile_inline") or (REPO / build["dockerfile"]).read_text()
    return re.search(r"^FROM (\S+)", text, re.M).group(1)  # type: ignore[union-attr]


def test_every_image_builds_with_a_size(built_images: BuiltImages) -> None:
    built = {service for service, spec in SERVICES.items() if "build" in spec}
    assert set(built_images.images) == built
    for image in built_images.images.values():
        assert image.endswith(f":{built_images.tag}")
        row = next(line for line in built_images.table.splitlines() if line.startswith(image))
        assert re.search(r"\d+ MB", row), row


def test_images_install_only_what_make_setup_installs(built_images: BuiltImages) -> None:
    """Everything an image adds to its base is in the lock at the lock's version (or is
    one of the repository's own packages, or uv at the Makefile's version)."""
    locked = lock_pins(REPO / "requirements/lock.txt")
    [uv_version] = re.findall(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    allowed = {**locked, "uv": uv_version}
    bases: dict[str, dict[str, str]] = {}
    for service, image in python_images(built_images).items():
        base = base_image(service)
        if base not in bases:
            bases[base] = distributions(built_images, base)
        added = {
            name: version
            for name, version in distributions(built_images, image).items()
            if bases[base].get(name) != version and name not in LOCAL
        }
        assert added, f"{image}: installed nothing?"
        wrong = {name: v for name, v in added.items() if allowed.get(name) != v}
        assert not wrong, f"{image} installs what make setup does not (not in the lock): {wrong}"


def test_api_service_image_contains_no_tensorflow(built_images: BuiltImages) -> None:
    installed = distributions(built_images, built_images.images["api-service"])
    assert "ai-edge-litert" in installed
    assert not [name for name in installed if name.startswith(("tensorflow", "tf-", "keras"))]


def test_every_python_image_carries_its_bytecode(built_images: BuiltImages) -> None:
    """Compiled at build time (UV_COMPILE_BYTECODE): the image sets PYTHONDONTWRITEBYTECODE
    and its user cannot write there, so a start would otherwise recompile every import."""
    code = (
        "import importlib.util as u, os, sys; "
        "print(*(os.path.exists(u.cache_from_source(u.find_spec(m).origin)) for m in sys.argv[1:]))"
    )
    for service, image in python_images(built_images).items():
        # Ours: a library and the shared package; the emulator's image: the emulator.
        modules = ["gcp_storage_emulator"] if service == "storage" else ["pydantic", "common"]
        assert built_images.run(image, "-c", code, *modules).split() == ["True"] * len(modules), (
            f"{image}: no bytecode for {modules}"
        )


def test_every_image_runs_as_a_non_root_user(built_images: BuiltImages) -> None:
    for image in built_images.images.values():
        uid = built_images.run(image, "-u", entrypoint="id").strip()
        assert uid != "0", image


def test_images_keep_the_dockerfiles_health_checks(built_images: BuiltImages) -> None:
    """The HEALTHCHECK of a Dockerfile is in its image (podman's OCI format drops it)."""
    checked = 0
    for service, image in built_images.images.items():
        build = SERVICES[service]["build"]
        if "dockerfile" not in build:
            continue
        stages = dockerfile_stages(REPO / build["dockerfile"])
        stage = build.get("target") or list(stages)[-1]
        healthcheck = stage_instruction(stages, stage, "HEALTHCHECK")
        if healthcheck is None:
            continue
        kept = subprocess.run(
            ["podman", "image", "inspect", "--format", "{{json .HealthCheck}}", image],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        url = re.search(r"http://[^'\"]+", healthcheck).group(0)  # type: ignore[union-attr]
        assert url in kept, f"{image}: no health check {url} in {kept}"
        checked += 1
    assert checked >= 2, "the api-service and frontend images have health checks"


def test_a_rebuild_records_the_new_commit(built_images: BuiltImages) -> None:
    """GIT_SHA reaches the image on a warm rebuild too (podman's builder once reused a
    cached ENV layer whose build argument had changed)."""
    for commit in ("1111111111111111", "2222222222222222"):
        tag = f"test-{commit[:4]}"
        env = images.build_environment("podman", tag, commit)
        built = subprocess.run(
            [*images.compose_command("podman", REPO), "build", "collect"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert built.returncode == 0, built.stderr[-3000:]
        image = f"mega-pipeline/data-collector:{tag}"
        try:
            recorded = built_images.run(image, "-c", "echo $GIT_SHA", entrypoint="sh")
        finally:
            subprocess.run(["podman", "rmi", image], capture_output=True, check=False)
        assert recorded.strip() == commit


def pipeline_order() -> list[str]:
    """The pipeline profile's services in the order their depends_on allows."""
    graph = {}
    for name, service in SERVICES.items():
        if "pipeline" in service.get("profiles", []):
            depends = service.get("depends_on", {})
            assert all(
                d["condition"] == "service_completed_successfully" for d in depends.values()
            ), name
            graph[name] = set(depends)
    return list(TopologicalSorter(graph).static_order())


@pytest.fixture(scope="module")
def pipeline(compose_project: ComposeProject) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each stage of the pipeline profile run once, in depends_on order, as compose
    defines it; stops at the first that fails.

    podman before 4.6 cannot wait for `service_completed_successfully` (podman-compose
    starts the chain at once), so the stages run one by one with `run --rm --no-deps`.
    """
    results = {}
    for stage in pipeline_order():
        results[stage] = compose_project.compose(
            "--profile", "pipeline", "run", "--rm", "--no-deps", "-T", stage
        )
        if results[stage].returncode != 0:
            break
    return results


def test_compose_pipeline_profile_runs_end_to_end(
    pipeline: dict[str, subprocess.CompletedProcess[str]],
    compose_project: ComposeProject,
    built_images: BuiltImages,
) -> None:
    assert list(pipeline) == ["collect", "process", "train", "evaluate", "optimize", "register"]
    for stage, result in pipeline.items():
        assert result.returncode == 0, f"{stage}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        last_line = result.stdout.strip().splitlines()[-1]
        assert last_line.startswith(f"{stage}: "), last_line
    root = compose_project.root
    manifest = (root / "data/raw/digits/manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 500
    assert (root / "reports/metrics.json").is_file()
    aliases = json.loads((root / "models/digits-cnn/aliases.json").read_text())
    assert aliases == {"production": "1"}
    assert (root / "models/digits-cnn/1/model.tflite").is_file()
    assert (root / "models/digits-cnn/1").stat().st_uid == PIPELINE_UID
    # No .git in a container: the commit comes from the image (GIT_SHA, make images).
    lineage = json.loads((root / "models/digits-cnn/1/lineage.json").read_text())
    assert lineage["git_sha"] == built_images.commit
    # W&B's offline run is kept on the host, as a local run keeps it (a run's backup in
    # .mega/runs is removed when the run ends well).
    assert list((root / ".wandb/wandb").glob("offline-run-*"))


def wait_healthy(project: ComposeProject, services: list[str], timeout: float = 120) -> None:
    """Run each service's healthcheck until it passes (podman here has no systemd timer to
    run them on its own); fail with the last output past `timeout` seconds."""
    containers = {s: f"{project.name}_{s}_1" for s in services}
    deadline = time.monotonic() + timeout
    pending = dict(containers)
    last = ""
    while pending and time.monotonic() < deadline:
        for service, container in list(pending.items()):
            check = project.run_podman("healthcheck", "run", container)
            if check.returncode == 0:
                del pending[service]
            last = check.stdout + check.stderr
        time.sleep(1)
    assert not pending, f"not healthy after {timeout}s: {sorted(pending)}; {last}"


def test_compose_stack_serves_a_prediction_through_the_frontend(
    pipeline: dict[str, subprocess.CompletedProcess[str]],
    compose_project: ComposeProject,
) -> None:
    registered = pipeline.get("register")
    assert registered is not None and registered.returncode == 0, "the pipeline registered no model"
    started = compose_project.compose("up", "-d")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        stack = ["api-service", "frontend"]
        wait_healthy(compose_project, stack)
        for service in stack:
            uid = compose_project.run_podman(
                "exec", f"{compose_project.name}_{service}_1", "id", "-u"
            )
            assert uid.stdout.strip() not in {"", "0"}, (service, uid.stderr)
        digit = next((compose_project.root / "data/raw/digits/images/3").glob("*.png"))
        port = compose_project.env["MEGA_FRONTEND_PORT"]
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/predict",
            files={"file": (digit.name, digit.read_bytes(), "image/png")},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "1"
        prediction = answer.json()
        assert prediction["label"] in {str(n) for n in range(10)}
        assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-3
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text
    finally:
        compose_project.compose("down", "--timeout", "5")
