"""Every `MEGA_*` variable is a settings field, documented in `.env.example` with its
one default, and no compose file or Dockerfile carries a second copy of that default."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from support import REPO

from api_service.settings import ServingSettings
from common.settings import Settings

# ServingSettings extends the shared Settings: together, every setting there is.
FIELDS = ServingSettings.model_fields
# `MEGA_NAME=value` or `# MEGA_NAME=value`: a value has no spaces, so prose never matches.
LINE = re.compile(r"^#? ?(MEGA_[A-Z0-9_]+)=(\S*)$")
NAME = re.compile(r"\bMEGA_[A-Z0-9_]*[A-Z0-9]_?")
# Files that read or set MEGA_* variables, beside the packages' own code.
# `${MEGA_X:-value}`: compose's own default (`${MEGA_X:-}`, empty, is unset: no default).
DEFAULTED = re.compile(r"\$\{MEGA_[A-Z0-9_]+:-[^}]+\}")
OUTSIDE_PACKAGES = ["docker-compose.yml", "Makefile", ".env.example", "README.md"]
# Variables of docker compose (from the environment or .env), not settings of the code:
# each is in .env.example's containers section with compose's default.
COMPOSE_VARIABLES = {
    "MEGA_IMAGE_TAG",
    "MEGA_API_PORT",
    "MEGA_FRONTEND_PORT",
    "MEGA_API_GCS_PORT",
    "MEGA_UID",
    "MEGA_GID",
}
# Variables of the image builds alone (`mega build`: workflow/images.py, scripts/stand-in-bases).
SCRIPT_VARIABLES = {"MEGA_CONTAINER_ENGINE", "MEGA_STAND_IN_CACHE"}


def example() -> dict[str, str]:
    """MEGA_* name → the value `.env.example` shows (commented out or not)."""
    shown = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        match = LINE.match(line.strip())
        if match:
            name, value = match.groups()
            assert name not in shown, f"{name} appears twice in .env.example"
            shown[name] = value.strip()
    return shown


def setting(name: str) -> str:
    return name.removeprefix("MEGA_").lower()


def test_serving_settings_extend_the_shared_ones() -> None:
    assert issubclass(ServingSettings, Settings)
    assert set(Settings.model_fields) < set(FIELDS)


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    fields = {f"MEGA_{name.upper()}" for name in FIELDS}
    shown = set(example()) - COMPOSE_VARIABLES
    assert set(example()) >= COMPOSE_VARIABLES, "every compose variable is in .env.example"
    assert not fields - shown, f"settings missing from .env.example: {sorted(fields - shown)}"
    assert not shown - fields, f".env.example names unknown settings: {sorted(shown - fields)}"


def test_env_example_shows_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Uncommenting a line as it stands changes nothing (settings without a default aside)."""
    monkeypatch.chdir(tmp_path)  # no .env here
    for name in [n for n in os.environ if n.startswith("MEGA_")]:
        monkeypatch.delenv(name)
    defaults = ServingSettings()
    shown = {
        name: value
        for name, value in example().items()
        if name not in COMPOSE_VARIABLES and FIELDS[setting(name)].default is not None
    }
    for name, value in shown.items():
        monkeypatch.setenv(name, value)
    uncommented = ServingSettings()
    differing = {
        name: (getattr(defaults, field), getattr(uncommented, field))
        for name in shown
        if getattr(defaults, field := setting(name)) != getattr(uncommented, field)
    }
    assert not differing, f"default ≠ value shown in .env.example: {differing}"


def files_naming_settings() -> list[Path]:
    """The code, scripts, manifests and docs that may read or set a MEGA_* variable."""
    files = [REPO / name for name in OUTSIDE_PACKAGES]
    for folder in ["src", "scripts", "deploy", "docs", "benchmarks"]:
        files += [
            path
            for path in (REPO / folder).rglob("*")
            if path.is_file()
            and "tests" not in path.relative_to(REPO).parts
            and path.suffix not in {".png", ".jpg", ".pyc"}
        ]
    return files


def test_every_mega_variable_named_anywhere_is_a_setting() -> None:
    """A name ending in `_` (`MEGA_MAX_*` in prose) must begin some setting's name."""
    names = {f"MEGA_{field.upper()}" for field in FIELDS} | COMPOSE_VARIABLES | SCRIPT_VARIABLES
    unknown = {}
    for path in files_naming_settings():
        for found in NAME.findall(path.read_text(errors="ignore")):
            known = (
                any(n.startswith(found) for n in names) if found.endswith("_") else found in names
            )
            if not known:
                unknown.setdefault(found, path.relative_to(REPO).as_posix())
    assert not unknown, f"MEGA_* variables that are no setting: {unknown}"


def _compose_environments() -> list[tuple[str, dict[str, str | None]]]:
    """Each service's environment, with the `<<:` merges of the x- blocks resolved."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return [
        (name, service["environment"])
        for name, service in compose["services"].items()
        if isinstance(service.get("environment"), dict)
    ]


def test_compose_passes_settings_through_without_a_second_default() -> None:
    """`${MEGA_X:-value}` restates a default that lives in the settings and can drift."""
    restated = {
        f"{service}: {name}": value
        for service, environment in _compose_environments()
        for name, value in environment.items()
        if name.startswith("MEGA_") and isinstance(value, str) and DEFAULTED.search(value)
    }
    assert not restated, f"compose restates settings defaults: {restated}"


def test_env_example_shows_the_compose_variables_defaults() -> None:
    """`${MEGA_X:-default}` in docker-compose.yml is what .env.example shows for MEGA_X."""
    text = (REPO / "docker-compose.yml").read_text()
    defaults = dict(re.findall(r"\$\{(MEGA_[A-Z0-9_]+):-([^}]*)\}", text))
    shown = example()
    for name in COMPOSE_VARIABLES:
        assert name in defaults, f"{name} is not used in docker-compose.yml"
        assert shown[name] == defaults[name], (name, shown[name], defaults[name])


def test_dockerfiles_set_no_setting_to_its_default() -> None:
    """An image may change a setting (bind to 0.0.0.0, /models), never restate its default."""
    assignment = re.compile(r"\b(MEGA_[A-Z0-9_]+)=(\S+)")
    restated = {}
    for dockerfile in sorted(REPO.glob("src/**/Dockerfile")):
        for name, value in assignment.findall(dockerfile.read_text()):
            default = FIELDS[setting(name)].default
            if default is not None and str(default) == value:
                restated[f"{dockerfile.relative_to(REPO)}: {name}"] = value
    assert not restated, f"Dockerfiles restate settings defaults: {restated}"


def test_an_empty_variable_is_an_unset_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`MEGA_X=` (in .env, or from compose's `${MEGA_X:-}`) leaves every setting at its default."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("MEGA_")]:
        monkeypatch.delenv(name)
    defaults = ServingSettings()
    for field in FIELDS:
        monkeypatch.setenv(f"MEGA_{field.upper()}", "")
    assert ServingSettings() == defaults
    (tmp_path / ".env").write_text("".join(f"MEGA_{field.upper()}=\n" for field in FIELDS))
    for field in FIELDS:
        monkeypatch.delenv(f"MEGA_{field.upper()}")
    assert ServingSettings() == defaults


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_a_port_outside_the_tcp_range_is_refused_as_a_setting(
    port: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`MEGA_SERVE_PORT` gets the range `--port` has, before anything tries to bind it."""
    from pydantic import ValidationError

    monkeypatch.setenv("MEGA_SERVE_PORT", port)
    with pytest.raises(ValidationError, match="serve_port"):
        Settings(_env_file=None)
