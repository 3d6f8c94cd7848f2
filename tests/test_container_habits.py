"""The course's container habits: Google credentials for the stages, and the docs that say
how to build, run and enter each image (docs/containers.md) naming what really exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from support import BIN, REPO

COMPOSE = REPO / "docker-compose.yml"
DOC = REPO / "docs/containers.md"
STAGES = ["collect", "process", "train", "evaluate", "register"]
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
