"""`.env.example` documents every setting, with its real default."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from common.settings import Settings

REPO = Path(__file__).resolve().parents[3]
# `MEGA_NAME=value` or `# MEGA_NAME=value`: a value has no spaces, so prose never matches.
LINE = re.compile(r"^#? ?(MEGA_[A-Z0-9_]+)=(\S*)$")


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


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    fields = {f"MEGA_{name.upper()}" for name in Settings.model_fields}
    shown = set(example())
    assert not fields - shown, f"settings missing from .env.example: {sorted(fields - shown)}"
    assert not shown - fields, f".env.example names unknown settings: {sorted(shown - fields)}"


def test_env_example_shows_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Uncommenting a line as it stands changes nothing (settings without a default aside)."""
    monkeypatch.chdir(tmp_path)  # no .env here
    for name in [n for n in os.environ if n.startswith("MEGA_")]:
        monkeypatch.delenv(name)
    defaults = Settings()
    shown = {
        name: value
        for name, value in example().items()
        if Settings.model_fields[name.removeprefix("MEGA_").lower()].default is not None
    }
    for name, value in shown.items():
        monkeypatch.setenv(name, value)
    uncommented = Settings()
    differing = {
        name: (getattr(defaults, field), getattr(uncommented, field))
        for name in shown
        if getattr(defaults, field := name.removeprefix("MEGA_").lower())
        != getattr(uncommented, field)
    }
    assert not differing, f"default ≠ value shown in .env.example: {differing}"
