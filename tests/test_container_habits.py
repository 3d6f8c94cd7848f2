"""The course's container habits: Google credentials for the stages, and the docs that say
how to build, run and enter each image (docs/containers.md) naming what really exists."""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import BIN, REPO

COMPOSE = REPO / "docker-compose.yml"
DOC = REPO / "docs/containers.md"
STAGES = ["collect", "process", "train", "evaluate", "optimize", "register"]
# What the commented credentials block holds: the variable and the file it points to.
ADC_LINE = re.compile(
    r"^(\s*)# ("
    r"- .*application_default_credentials\.json.*"
    r"|GOOGLE_APPLICATION_CREDENTIALS: .*"
    r")$"
)


def with_credentials() -> str:
    """docker-compose.yml as a GCP team makes it: the credentials lines uncommented."""
    lines = []
    for line in COMPOSE.read_text().splitlines():
        found = ADC_LINE.match(line)
        lines.append(f"{found[1]}{found[2]}" if found else line)
    return "\n".join(lines) + "\n"


def services(text: str) -> dict[str, Any]:
    return dict(yaml.safe_load(text)["services"])


def adc_mounts(service: dict[str, Any]) -> list[list[str]]:
    """The service's bind mounts of an ADC file, each as [source, target, mode]."""
    return [
        volume.rsplit(":", 2)
        for volume in service.get("volumes", [])
        if "application_default_credentials.json" in volume
    ]


def test_credentials_are_off_until_a_team_uncomments_them() -> None:
    text = COMPOSE.read_text()
    assert text != with_credentials(), "docker-compose.yml shows the commented ADC lines"
    for name, service in services(text).items():
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in service.get("environment", {}), name
        assert not adc_mounts(service), name


def test_uncommented_credentials_reach_every_stage_read_only() -> None:
    edited = services(with_credentials())
    for stage in STAGES:
        [[source, target, mode]] = adc_mounts(edited[stage])
        assert mode == "ro", stage
        assert edited[stage]["environment"]["GOOGLE_APPLICATION_CREDENTIALS"] == target, stage
        # gcloud's own place unless GCLOUD_ADC (documented in .env.example) moves it.
        assert source.startswith("${GCLOUD_ADC:-${HOME}/.config/gcloud/"), source
    # The serving stack never gets a developer's credentials.
    for name in ("api-service", "frontend"):
        assert not adc_mounts(edited[name]), name
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in edited[name].get("environment", {}), name


def test_uncommented_credentials_keep_the_compose_file_valid(tmp_path: Path) -> None:
    edited = tmp_path / "docker-compose.yml"
    edited.write_text(with_credentials())
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(edited)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_env_example_shows_the_credentials_file_and_no_container_path() -> None:
    text = (REPO / ".env.example").read_text()
    assert re.search(r"^# GCLOUD_ADC=/\S+/application_default_credentials\.json$", text, re.M)
    # .env reaches the api-service too, which has no credentials file mounted.
    assert not re.search(r"^#? ?GOOGLE_APPLICATION_CREDENTIALS=", text, re.M)


# Pages that show `docker compose` commands; each must name only real services and profiles.
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# `docker compose run` options that take a value as the next word.
RUN_VALUE_OPTIONS = {"--entrypoint", "-e", "--env", "-u", "--user", "-v", "--volume", "-w"}
RUN_VALUE_OPTIONS |= {"--workdir", "--name", "-p", "--publish", "-l", "--label"}


def compose_commands(text: str) -> list[list[str]]:
    """Every `docker compose …` command in a page (code blocks and inline code), as words;
    a line ending in a backslash goes on on the next line."""
    text = text.replace("\\\n", " ")
    commands = []
    for found in re.findall(r"docker compose [^`\n#]*", text):
        with contextlib.suppress(ValueError):  # prose with an odd quote is no command
            commands.append(shlex.split(found.replace("…", "")))
    return commands


def run_service(words: list[str]) -> str | None:
    """The service a `docker compose [--profile P]… run [options] SERVICE …` starts."""
    if "run" not in words:
        return None
    rest = iter(words[words.index("run") + 1 :])
    for word in rest:
        if word in RUN_VALUE_OPTIONS:
            next(rest, None)
        elif not word.startswith("-"):
            return word
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_docs_name_only_real_compose_services_and_profiles(page: Path) -> None:
    compose = services(COMPOSE.read_text())
    profiles = {p for svc in compose.values() for p in svc.get("profiles", [])}
    for words in compose_commands(page.read_text()):
        used = {words[i + 1] for i, word in enumerate(words[:-1]) if word == "--profile"}
        assert used <= profiles, (page.name, words)
        service = run_service(words)
        assert service is None or service in compose, (page.name, words)


def doc_text() -> str:
    return DOC.read_text()


@pytest.mark.parametrize("page", ["README.md", "docs/architecture.md"])
def test_containers_doc_is_linked_where_containers_are_described(page: str) -> None:
    assert re.search(r"\]\((docs/)?containers\.md(#[\w-]+)?\)", (REPO / page).read_text()), page


def test_containers_doc_maps_docker_shell_for_every_stage() -> None:
    commands = compose_commands(doc_text())
    ran = {run_service(words) for words in commands}
    assert "docker-shell.sh" in doc_text()
    assert set(STAGES) <= ran, f"stages without a `docker compose run`: {set(STAGES) - ran}"
    shells = [words for words in commands if "--entrypoint" in words]
    assert any(words[words.index("--entrypoint") + 1] in {"bash", "sh"} for words in shells)
    profiles = {
        words[i + 1] for words in commands for i, w in enumerate(words[:-1]) if w == "--profile"
    }
    assert {"pipeline", "cloud-sim"} <= profiles


def test_containers_doc_gives_the_size_of_every_image_compose_builds() -> None:
    section = doc_text().split("## Image sizes and build times", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    sized = {re.findall(r"`([^`]+)`", row)[0] for row in rows if re.search(r"\| [\d,]+ MB \|", row)}
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    built = {svc["image"].split(":")[0] for svc in services.values() if "build" in svc}
    assert sized == built
