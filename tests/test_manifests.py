"""Container and stack manifests: hadolint-clean Dockerfiles, a schema-valid compose file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from dockerfiles import dockerfile_stages, stage_instruction
from support import BIN, REPO

# One Dockerfile for the Python containers (a target each), the frontend's own.
PYTHON_DOCKERFILE = REPO / "src/Dockerfile"
DOCKERFILES = [PYTHON_DOCKERFILE, *sorted(REPO.glob("src/*/Dockerfile"))]
PYTHON_CONTAINERS = ["data-collector", "data-processor", "model-training", "api-service"]
CONTAINERS = [*PYTHON_CONTAINERS, "frontend"]


def test_every_container_has_an_image_and_a_readme() -> None:
    stages = dockerfile_stages(PYTHON_DOCKERFILE)
    for name in PYTHON_CONTAINERS:
        assert name in stages, f"no `FROM … AS {name}` in {PYTHON_DOCKERFILE}"
        assert stage_instruction(stages, name, "ENTRYPOINT"), name
    assert (REPO / "src/frontend/Dockerfile").is_file()
    for name in CONTAINERS:
        assert (REPO / "src" / name / "README.md").is_file(), name


def test_python_images_install_dependencies_before_the_code() -> None:
    """The dependency layer must not depend on the code, or every edit reinstalls it."""
    [base] = [
        lines
        for name, lines in dockerfile_stages(PYTHON_DOCKERFILE).items()
        if name not in PYTHON_CONTAINERS
    ]
    copies = [i for i, line in enumerate(base) if line.startswith("COPY ")]
    code = [i for i in copies if "pyproject.toml" not in base[i] and "requirements/" not in base[i]]
    installs = [
        i for i, line in enumerate(base) if "pip install" in line and "--constraint" in line
    ]
    assert installs and code and installs[0] < code[0], base
    assert "--excludes requirements/local-packages.txt" in base[installs[0]]
    listed = (REPO / "requirements/local-packages.txt").read_text().split()
    local = {
        line.split('"')[1]
        for path in REPO.glob("src/*/pyproject.toml")
        for line in path.read_text().splitlines()
        if line.startswith("name = ")
    }
    assert local <= set(listed), "every package of src/ is excluded from index installs"


def test_python_images_use_the_uv_of_make_setup() -> None:
    makefile = (REPO / "Makefile").read_text()
    [pinned] = re.findall(r"^UV_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert f"ARG UV_VERSION={pinned}\n" in PYTHON_DOCKERFILE.read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_dockerfile_is_hadolint_clean(dockerfile: Path) -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_images_run_as_a_non_root_user(dockerfile: Path) -> None:
    stages = dockerfile_stages(dockerfile)
    for stage in stages:  # every stage can be built as a target
        user = stage_instruction(stages, stage, "USER")
        assert user is not None, f"{stage}: no USER instruction"
        assert user.split(":")[0] not in {"0", "root"}, stage


def inline_dockerfiles() -> dict[str, str]:
    """The compose file's `dockerfile_inline` builds, by service."""
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    return {
        f"docker-compose.yml: {name}": svc["build"]["dockerfile_inline"]
        for name, svc in services.items()
        if "dockerfile_inline" in svc.get("build", {})
    }


def test_every_image_installs_with_the_uv_and_the_lock_of_make_setup() -> None:
    """pip installs uv alone, at the Makefile's version; everything else is `uv pip install`
    with a lock as constraint (or the repository's own code without dependencies)."""
    [pinned] = re.findall(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    texts = {str(path.relative_to(REPO)): path.read_text() for path in DOCKERFILES}
    for name, text in {**texts, **inline_dockerfiles()}.items():
        joined = text.replace("\\\n", " ")
        for command in re.split(r"&&|;|\n|\bthen\b|\belse\b", joined):
            words = command.split()
            if "install" not in words or "pip" not in words:
                continue
            if words[0] == "uv" or "uv" in words[: words.index("pip")]:
                assert "--no-deps" in words or re.search(
                    r"--constraint requirements/lock(-gpu)?\.txt", command
                ), f"{name}: {command.strip()}"
            else:
                assert re.search(r'"uv==\$\$?\{UV_VERSION\}"$', command.strip()), (
                    f"{name}: pip installs something other than uv: {command.strip()}"
                )
                assert f"ARG UV_VERSION={pinned}" in text, name


def test_every_image_compiles_what_uv_installs() -> None:
    """As `make setup` does (--compile-bytecode): an image sets PYTHONDONTWRITEBYTECODE or
    runs as a user who cannot write its packages, so nothing would compile them later.
    (The containers tier checks the built images; this catches it without root.)"""
    for name, text in {
        **{str(path.relative_to(REPO)): path.read_text() for path in DOCKERFILES},
        **inline_dockerfiles(),
    }.items():
        if "uv pip install" in text:
            assert re.search(r"^\s*(ENV\s+)?.*\bUV_COMPILE_BYTECODE=1\b", text, re.M), name


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    result = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(REPO / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_profiles() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    default = {name for name, svc in services.items() if "profiles" not in svc}
    assert default == {"api-service", "frontend"}
    pipeline = {name for name, svc in services.items() if "pipeline" in svc.get("profiles", [])}
    assert {"collect", "process", "train", "evaluate", "register"} <= pipeline
    for svc in services.values():
        build = svc.get("build")
        if build:
            assert build.get("dockerfile_inline") or (REPO / build["dockerfile"]).is_file()


def test_compose_stack_has_healthchecks_and_the_models_volume() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name in ("api-service", "frontend"):
        assert services[name]["healthcheck"]["test"], name
    assert any(v.endswith(":/models:ro") for v in services["api-service"]["volumes"])
    assert services["frontend"]["depends_on"]["api-service"]["condition"] == "service_healthy"
    upstream = services["frontend"]["environment"]["API_UPSTREAM"]
    assert upstream == "http://api-service:8000"
    assert "${API_UPSTREAM}" in (REPO / "src/frontend/nginx.conf").read_text()


def test_compose_cloud_sim_profile_rehearses_gcs_offline() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    cloud = {name for name, svc in services.items() if "cloud-sim" in svc.get("profiles", [])}
    assert {"storage", "seed-models", "api-service-gcs"} <= cloud
    emulator = services["storage"]
    port = emulator["command"][emulator["command"].index("--port") + 1]
    assert "gcp-storage-emulator" in emulator["build"]["dockerfile_inline"]
    assert emulator["healthcheck"]["test"]
    # Everything that talks to Cloud Storage there goes to the emulator, never to Google.
    for name in cloud - {"storage"}:
        env = services[name]["environment"]
        assert env["STORAGE_EMULATOR_HOST"] == f"http://storage:{port}", name
    assert services["api-service-gcs"]["environment"]["MEGA_MODELS_ROOT"].startswith("gs://")


def test_inline_dockerfiles_are_hadolint_clean() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    inline = {
        name: svc["build"]["dockerfile_inline"]
        for name, svc in services.items()
        if "dockerfile_inline" in svc.get("build", {})
    }
    assert inline, "the cloud-sim storage emulator is built from an inline Dockerfile"
    for name, text in inline.items():
        result = subprocess.run(
            [str(BIN / "hadolint"), "--no-color", "-"], input=text, capture_output=True, text=True
        )
        assert result.returncode == 0, name + ": " + result.stdout + result.stderr
        assert "--constraint" in text, name


def test_lock_records_no_index_address() -> None:
    text = (REPO / "requirements/lock.txt").read_text()
    assert "--index-url" not in text and "--extra-index-url" not in text
    assert "://" not in text
    for name in ("uv.lock", "poetry.lock", "Pipfile.lock"):
        assert not (REPO / name).exists()
