"""cloudbuild.yaml builds what `mega build --push` pushes, as docker-compose.yml defines it.

The two files cannot drift: each image compose builds (but the cloud-sim emulator's) is
a Cloud Build step with the same Dockerfile, target, build arguments and context, tagged
as `workflow.images.remote_image` names it. The steps' shell scripts run here, under
`sh`, with the substitutions made as Cloud Build makes them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO

from workflow.images import (
    GPU_TAG_SUFFIX,
    TRAINING_IMAGE,
    Image,
    compose_images,
    image_tag,
    remote_image,
)

CLOUDBUILD = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
STEPS: dict[str, dict[str, Any]] = {step["id"]: step for step in CLOUDBUILD["steps"]}
PUSHED = [image for image in compose_images(REPO) if not image.local_only]
# What Cloud Build replaces: $$ (a dollar), ${_NAME} and $_NAME (a substitution).
SUBSTITUTION = re.compile(r"\$\$|\$\{(\w+)\}|\$(\w+)")
COMPOSE_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")
REPOSITORY = "registry.invalid/my-project/images"  # .invalid: never a real host
TAG = "0123456789ab"


def substitute(text: str, values: dict[str, str]) -> str:
    """`text` as Cloud Build runs it: the file's substitution defaults, then `values`."""
    known = {**CLOUDBUILD["substitutions"], **values}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name is None:
            return "$"
        assert name in known, f"${name} is no substitution of cloudbuild.yaml"
        return str(known[name])

    return SUBSTITUTION.sub(replace, text)


def docker_build(args: list[str]) -> dict[str, Any]:
    """The parts of a `docker build` command line (without `docker`)."""
    assert args[0] == "build", args
    parsed: dict[str, Any] = {"target": None, "args": {}, "tags": []}
    rest = iter(args[1:])
    for arg in rest:
        if arg == "-f":
            parsed["dockerfile"] = next(rest)
        elif arg == "--target":
            parsed["target"] = next(rest)
        elif arg == "--build-arg":
            key, _, value = next(rest).partition("=")
            parsed["args"][key] = value
        elif arg == "-t":
            parsed["tags"].append(next(rest))
        else:
            assert "context" not in parsed, f"unexpected argument {arg}"
            parsed["context"] = arg
    return parsed


def compose_build(image: Image) -> dict[str, Any]:
    """`docker_build`'s view of compose's build of `image`, in Cloud Build's terms."""
    build = COMPOSE[image.service]["build"]
    args = {}
    for key, value in (build.get("args") or {}).items():
        # ${GIT_SHA:-unknown} is the substitution _GIT_SHA, with the same default.
        found = COMPOSE_DEFAULT.fullmatch(str(value))
        if found:
            name, default = found.groups()
            assert CLOUDBUILD["substitutions"][f"_{name}"] == default, name
            value = f"${{_{name}}}"
        args[key] = str(value)
    return {
        "dockerfile": build["dockerfile"],
        "target": build.get("target"),
        "args": args,
        "tags": [remote_image("${_REPOSITORY}", image.container, "${_TAG}")],
        "context": build["context"],
    }


def run_step(step: dict[str, Any], values: dict[str, str], path: str = "") -> Any:
    assert step["entrypoint"] == "sh" and step["args"][0] == "-c"
    env = {"PATH": f"{path}:/usr/bin:/bin" if path else "/usr/bin:/bin"}
    script = substitute(step["args"][1], values)
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env=env, timeout=30, check=False
    )


def test_every_pushed_image_is_built_as_compose_builds_it() -> None:
    assert {image.container for image in PUSHED} >= {"api-service", "frontend", TRAINING_IMAGE}
    built = {step_id for step_id, step in STEPS.items() if step["args"][0] == "build"}
    assert built == {image.container for image in PUSHED}
    for image in PUSHED:
        assert docker_build(STEPS[image.container]["args"]) == compose_build(image), image


def test_the_emulator_is_not_built_in_the_cloud() -> None:
    local = [image.container for image in compose_images(REPO) if image.local_only]
    assert local == ["storage-emulator"]
    assert "storage-emulator" not in (REPO / "cloudbuild.yaml").read_text()


def test_images_lists_each_build_once_as_mega_build_names_it() -> None:
    expected = [remote_image("${_REPOSITORY}", i.container, "${_TAG}") for i in PUSHED]
    assert sorted(CLOUDBUILD["images"]) == sorted(expected)
    assert len(set(CLOUDBUILD["images"])) == len(CLOUDBUILD["images"])


def test_steps_use_one_builder_by_its_short_name_after_the_check() -> None:
    steps = CLOUDBUILD["steps"]
    assert steps[0]["id"] == "check" and "waitFor" not in steps[0]
    builders = {step["name"] for step in steps}
    [builder] = builders
    # A short name from the default library: no registry host, no path.
    assert "/" not in builder and re.fullmatch(r"docker:[\w.-]+", builder)
    seen: list[str] = []
    for step in steps:
        assert step["id"] not in seen, "step ids are unique"
        for earlier in step.get("waitFor", []):
            assert earlier in seen, f"{step['id']} waits for {earlier}, not before it"
        seen.append(step["id"])
    for image in PUSHED:
        assert STEPS[image.container]["waitFor"] == ["check"]


def test_every_substitution_is_declared_and_used() -> None:
    text = "\n".join(
        line
        for line in (REPO / "cloudbuild.yaml").read_text().splitlines()
        if not line.lstrip().startswith("#")
    )
    used = {a or b for a, b in re.findall(r"(?<!\$)\$\{(\w+)\}|(?<!\$)\$(\w+)", text)}
    # A dollar for the shell is written $$: a lone one is Cloud Build's to misread.
    assert re.findall(r"\$(?![${\w])", text.replace("$$", "")) == []
    declared = set(CLOUDBUILD["substitutions"])
    # Cloud Build refuses a build whose substitutions are unused or undefined.
    assert used == declared == {"_REPOSITORY", "_TAG", "_GIT_SHA", "_GPU"}


def test_no_registry_host_is_written() -> None:
    text = (REPO / "cloudbuild.yaml").read_text()
    hosts = re.findall(r"\b[a-z0-9-]+(?:\.[a-z0-9-]+)+(?::\d+)?/\S*", text)
    assert hosts == []


def test_the_build_has_time_for_the_tensorflow_images() -> None:
    assert int(CLOUDBUILD["timeout"].removesuffix("s")) >= 1800
    assert CLOUDBUILD["options"]["machineType"].startswith("E2_HIGHCPU")


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"_TAG": TAG}, "set _REPOSITORY"),
        ({"_REPOSITORY": REPOSITORY}, "set _REPOSITORY"),
        ({"_REPOSITORY": REPOSITORY, "_TAG": "latest"}, "_TAG=latest: use the commit's"),
        ({"_REPOSITORY": REPOSITORY, "_TAG": TAG + "0"}, "use the commit's first 12"),
        ({"_REPOSITORY": REPOSITORY, "_TAG": TAG, "_GPU": "yes"}, "_GPU is true or false"),
    ],
)
def test_the_check_step_refuses_missing_or_bad_substitutions(
    values: dict[str, str], words: str
) -> None:
    result = run_step(STEPS["check"], values)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert words in line


@pytest.mark.parametrize("tag", [TAG, TAG + "-dirty"])
def test_the_check_step_passes_what_mega_build_would_tag(tag: str) -> None:
    result = run_step(STEPS["check"], {"_REPOSITORY": REPOSITORY, "_TAG": tag, "_GPU": "true"})
    assert result.returncode == 0, result.stderr


def test_the_documented_tag_is_image_tag() -> None:
    [command] = [
        line for line in (REPO / "cloudbuild.yaml").read_text().splitlines() if "gcloud" in line
    ]
    [expression] = re.findall(r"_TAG=\$\(([^)]*)\)", command)
    documented = subprocess.run(
        ["sh", "-c", expression], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert documented == image_tag(REPO).removesuffix("-dirty")
    assert "_GIT_SHA=$(git rev-parse HEAD)" in command


FAKE_DOCKER = """#!{python}
import json, sys
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
"""


@pytest.mark.parametrize("gpu", ["true", "false"])
def test_the_gpu_step_builds_and_pushes_the_gpu_training_image_when_asked(
    gpu: str, tmp_path: Path
) -> None:
    log = tmp_path / "docker.log"
    (tmp_path / "docker").write_text(FAKE_DOCKER.format(python=sys.executable, log=str(log)))
    (tmp_path / "docker").chmod(0o755)
    values = {"_REPOSITORY": REPOSITORY, "_TAG": TAG, "_GIT_SHA": "f" * 40, "_GPU": gpu}
    result = run_step(STEPS["model-training-gpu"], values, path=str(tmp_path))
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if gpu == "false":
        assert calls == []
        return
    build, push = calls
    [training] = [image for image in PUSHED if image.container == TRAINING_IMAGE]
    expected = compose_build(training)
    expected["args"] = {
        key: substitute(value, values) for key, value in expected["args"].items()
    } | {"ACCELERATOR": "gpu"}
    gpu_image = remote_image(REPOSITORY, TRAINING_IMAGE, TAG + GPU_TAG_SUFFIX)
    expected["tags"] = [gpu_image]
    assert docker_build(build) == expected
    assert push == ["push", gpu_image]
    assert STEPS["model-training-gpu"]["waitFor"] == [TRAINING_IMAGE]
