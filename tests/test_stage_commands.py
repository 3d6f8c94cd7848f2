"""The stage commands are defined once: docker compose runs what dvc.yaml runs.

Each pipeline service's image ENTRYPOINT plus its `command` must equal the stage's
`cmd` in dvc.yaml (with `${dataset}` filled in from params.yaml), up to the order of
options and `--opt=value` versus `--opt value`.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from dockerfiles import dockerfile_stages, stage_instruction

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def normalize(args: list[str]) -> tuple[tuple[str, ...], frozenset[tuple[str, str | None]]]:
    """(positional words, {(option, value)}): option order and `=` spelling do not matter."""
    words: list[str] = []
    options: set[tuple[str, str | None]] = set()
    index = 0
    while index < len(args):
        arg = args[index]
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            options.add((name, value))
        elif arg.startswith("--"):
            has_value = index + 1 < len(args) and not args[index + 1].startswith("--")
            options.add((arg, args[index + 1] if has_value else None))
            index += has_value
        else:
            words.append(arg)
        index += 1
    return tuple(words), frozenset(options)


def dvc_command(stage: str) -> list[str]:
    cmd = STAGES[stage]["cmd"].replace("${dataset}", PARAMS["dataset"])
    assert "${" not in cmd, f"dvc.yaml {stage}: unhandled variable in {cmd!r}"
    return shlex.split(cmd)


def entrypoints() -> dict[str, list[str]]:
    """Image name → the ENTRYPOINT of the Dockerfile target that builds it."""
    found = {}
    for service in COMPOSE["services"].values():
        build = service.get("build", {})
        if build.get("dockerfile") and "image" in service:
            stages = dockerfile_stages(REPO / build["dockerfile"])
            target = build.get("target", list(stages)[-1])  # no target: the last stage
            entrypoint = stage_instruction(stages, target, "ENTRYPOINT")
            if entrypoint is not None:
                found[service["image"]] = json.loads(entrypoint)
    return found


def compose_command(service: str) -> list[str]:
    spec = COMPOSE["services"][service]
    command = spec["command"]
    command = shlex.split(command) if isinstance(command, str) else list(command)
    return [*entrypoints()[spec["image"]], *command]


PIPELINE = sorted(
    name for name, spec in COMPOSE["services"].items() if "pipeline" in spec.get("profiles", [])
)


def test_compose_has_a_service_for_every_stage_and_no_other() -> None:
    assert sorted(STAGES) == PIPELINE


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_compose_runs_the_dvc_stage_command(stage: str) -> None:
    assert normalize(compose_command(stage)) == normalize(dvc_command(stage)), (
        f"compose `{stage}`: {shlex.join(compose_command(stage))}\n"
        f"dvc.yaml `{stage}`: {shlex.join(dvc_command(stage))}"
    )


def test_normalize_sees_order_and_spelling_alike_but_not_a_missing_option() -> None:
    assert normalize(["x", "--a=1", "--b", "2"]) == normalize(["x", "--b", "2", "--a", "1"])
    assert normalize(["x", "--a", "1"]) != normalize(["x", "--a", "1", "--c", "3"])
    assert normalize(["x", "--flag", "--a", "1"]) != normalize(["x", "--a", "1"])
