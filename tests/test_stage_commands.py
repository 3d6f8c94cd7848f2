"""The stage commands are defined once, in dvc.yaml: compose and kfp run what it runs.

- docker compose: each pipeline service's image ENTRYPOINT plus its `command` equals the
  stage's `cmd` (with `${dataset}` filled in from params.yaml).
- the kfp pipeline (compiled as `mega pipeline compile` compiles it): each step's
  command equals the stage's `cmd` once every artifact is replaced by the path dvc.yaml
  gives it, read from the step that produces it (so evaluate's `--model` must be
  train's `--out`), and the options only the cloud adds are left out.

Up to the order of options and `--opt=value` versus `--opt value`. Each check fails when
one of the three files is edited alone (the tests at the end edit copies).
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfiles import dockerfile_stages, stage_instruction
from kfp_local import ARTIFACT, compiled_steps

REPO = Path(__file__).resolve().parent.parent
FILES = ("dvc.yaml", "docker-compose.yml", "params.yaml")
# What the pipeline adds to a stage's command in the cloud, and nothing else may differ.
CLOUD_ONLY = {"--params", "--accuracy-file", "--macro-f1-file", "--registry"}
CLOUD_ONLY_REGISTER = {"--vertex-serving-image"}

Options = frozenset[tuple[str, str | None]]


def normalize(args: list[str]) -> tuple[tuple[str, ...], Options]:
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


def dvc_commands(root: Path) -> dict[str, list[str]]:
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    dataset = yaml.safe_load((root / "params.yaml").read_text())["dataset"]
    commands = {}
    for stage, spec in stages.items():
        cmd = spec["cmd"].replace("${dataset}", dataset)
        assert "${" not in cmd, f"dvc.yaml {stage}: unhandled variable in {cmd!r}"
        commands[stage] = shlex.split(cmd)
    return commands


# --- docker compose ---------------------------------------------------------------------


def compose_commands(root: Path) -> dict[str, list[str]]:
    """Each pipeline service's ENTRYPOINT + command."""
    services = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]
    entrypoints = {}
    for service in services.values():
        build = service.get("build", {})
        if build.get("dockerfile") and "image" in service:
            stages = dockerfile_stages(REPO / build["dockerfile"])
            target = build.get("target", list(stages)[-1])  # no target: the last stage
            entrypoint = stage_instruction(stages, target, "ENTRYPOINT")
            if entrypoint is not None:
                entrypoints[service["image"]] = json.loads(entrypoint)
    commands = {}
    for name, spec in services.items():
        if "pipeline" in spec.get("profiles", []):
            command = spec["command"]
            command = shlex.split(command) if isinstance(command, str) else list(command)
            commands[name] = [*entrypoints[spec["image"]], *command]
    return commands


# --- kfp ----------------------------------------------------------------------------------


def compiled_pipeline(root: Path) -> dict[str, Any]:
    """The pipeline `mega pipeline compile` writes for the project in `root`."""
    from common.settings import Settings
    from workflow.pipeline_submit import compiled_spec, plan_pipeline
    from workflow.project import Project
    from workflow.vertex import CloudTarget

    settings = Settings()
    target = CloudTarget.from_settings(settings, dry_run=True)
    return compiled_spec(plan_pipeline(Project(root, settings), settings, target, "test"))


def kfp_commands(spec: dict[str, Any], dvc: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each step's command with artifacts as dvc.yaml's paths and the cloud's options out.

    An output artifact is the path dvc.yaml gives the same option of the producing
    stage; an input is its producer's output. Unresolvable ones stay as placeholders.
    """
    steps = compiled_steps(spec)
    paths: dict[tuple[str, str], str] = {}
    for step, (command, _) in steps.items():
        dvc_options = dict(normalize(dvc.get(step, []))[1])
        for option, value in itertools.pairwise(command):
            found = ARTIFACT.fullmatch(value)
            if found and found[1] == "outputs" and option in dvc_options:
                paths[(step, found[2])] = str(dvc_options[option])
    commands = {}
    for step, (command, sources) in steps.items():

        def path(found: re.Match[str], step: str = step, sources: dict = sources) -> str:
            source = (step, found[2]) if found[1] == "outputs" else sources[found[2]]
            return paths.get(source, found[0])

        words = [ARTIFACT.sub(path, word) for word in command]
        dropped = CLOUD_ONLY | (CLOUD_ONLY_REGISTER if step == "register" else set())
        kept, index = [], 0
        while index < len(words):
            if words[index] in dropped:
                index += 2
                continue
            kept.append(words[index])
            index += 1
        commands[step] = kept
    return commands


# --- the checks ---------------------------------------------------------------------------


def disagreements(root: Path, spec: dict[str, Any] | None = None) -> list[str]:
    """Where compose or the kfp pipeline runs another command than dvc.yaml (empty: none)."""
    dvc = dvc_commands(root)
    found = []
    for name, others in [
        ("compose", compose_commands(root)),
        ("kfp", kfp_commands(spec or compiled_pipeline(root), dvc)),
    ]:
        if sorted(others) != sorted(dvc):
            found.append(f"{name} steps {sorted(others)} != dvc.yaml stages {sorted(dvc)}")
        for stage in sorted(set(dvc) & set(others)):
            if normalize(others[stage]) != normalize(dvc[stage]):
                found.append(
                    f"{name} `{stage}`: {shlex.join(others[stage])}\n"
                    f"  dvc.yaml `{stage}`: {shlex.join(dvc[stage])}"
                )
    return found


def test_compose_and_kfp_run_the_dvc_stage_commands() -> None:
    assert disagreements(REPO) == []


def test_normalize_sees_order_and_spelling_alike_but_not_a_missing_option() -> None:
    assert normalize(["x", "--a=1", "--b", "2"]) == normalize(["x", "--b", "2", "--a", "1"])
    assert normalize(["x", "--a", "1"]) != normalize(["x", "--a", "1", "--c", "3"])
    assert normalize(["x", "--flag", "--a", "1"]) != normalize(["x", "--a", "1"])


# --- each file edited alone is caught -------------------------------------------------------


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for name in FILES:
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} no longer has {old!r}: update this test"
    path.write_text(text.replace(old, new, 1))


def test_dvc_yaml_edited_alone_is_caught(copy: Path) -> None:
    """train writes elsewhere in dvc.yaml only: compose and kfp still read the old path."""
    edit(copy / "dvc.yaml", "--out models/candidate", "--out models/trained")
    found = disagreements(copy)
    assert any(line.startswith("compose `train`") for line in found), found
    assert any(line.startswith("kfp `evaluate`") for line in found), found


def test_compose_edited_alone_is_caught(copy: Path) -> None:
    edit(copy / "docker-compose.yml", "--metrics=reports/metrics.json", "--metrics=m.json")
    found = disagreements(copy)
    assert len(found) == 1 and found[0].startswith("compose `evaluate`"), found


@pytest.mark.parametrize(
    "mutation",
    ["an input from the wrong step", "an option dropped", "an option added"],
)
def test_kfp_edited_alone_is_caught(copy: Path, mutation: str) -> None:
    spec = compiled_pipeline(copy)
    tasks = spec["root"]["dag"]["tasks"]
    container = spec["deploymentSpec"]["executors"]["exec-evaluate"]["container"]
    if mutation == "an input from the wrong step":  # evaluate reads the data as its model
        tasks["evaluate"]["inputs"]["artifacts"]["candidate"]["taskOutputArtifact"] = {
            "producerTask": "process",
            "outputArtifactKey": "processed",
        }
    elif mutation == "an option dropped":
        index = container["args"].index("--details")
        del container["args"][index : index + 2]
    else:
        container["args"] += ["--seed", "1"]
    found = disagreements(copy, spec)
    assert len(found) == 1 and found[0].startswith("kfp `evaluate`"), found
