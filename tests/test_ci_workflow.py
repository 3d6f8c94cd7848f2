"""The GitHub Actions workflow: valid, calling what exists, running each test tier once.

It cannot run here (no GitHub runner), so these tests check what can go stale without
anyone noticing: a renamed Makefile target, a new test marker no job selects, a new
pipeline stage or image the Docker jobs leave out.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import tomllib
from typing import Any

import pytest
import yaml
from _pytest.mark.expression import Expression
from support import BIN, REPO

WORKFLOW = REPO / ".github/workflows/ci.yml"
COMPOSE = REPO / "docker-compose.yml"
# `make TARGET` anywhere in a step's script (after sudo, in a message, …).
MAKE_CALL = re.compile(r"(?<![\w-])make\s+([\w-]+)")
# pytest's own keywords in a marker expression, not marker names.
EXPRESSION_WORDS = {"and", "or", "not"}


def load_workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def run_text(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in steps(job))


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):(?!=)", text, re.MULTILINE))


def compose_services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def test_workflow_is_valid_against_the_github_workflow_schema() -> None:
    # The schema ships with check-jsonschema: this needs no network.
    result = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            str(WORKFLOW),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_jobs_call_only_makefile_targets_that_exist() -> None:
    jobs = load_workflow()["jobs"]
    called = {target for job in jobs.values() for target in MAKE_CALL.findall(run_text(job))}
    missing = called - makefile_targets()
    assert not missing, f"ci.yml calls make targets the Makefile lacks: {sorted(missing)}"
    # What .ci/run runs: the lint, the default run, the tests.
    assert {"lint", "run", "test"} <= called


def test_default_run_job_checks_that_git_stays_clean() -> None:
    jobs = load_workflow()["jobs"]
    [job] = [job for job in jobs.values() if re.search(r"^make run$", run_text(job), re.M)]
    text = run_text(job)
    assert text.index("make run") < text.index("git status --porcelain")
    assert "exit 1" in text


def test_actions_are_pinned_to_a_major_version() -> None:
    for name, job in load_workflow()["jobs"].items():
        for step in steps(job):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@v\d+", step["uses"]), (name, step)


def with_matrix(text: str, entry: dict[str, Any]) -> str:
    """`text` with each `${{ matrix.KEY }}` replaced by the matrix entry's value."""

    def value(found: re.Match[str]) -> str:
        return str(entry[found[1]])

    return re.sub(r"\$\{\{ matrix\.(\w+) \}\}", value, text)


def tier_selections() -> dict[str, str]:
    """Each `make test` job (matrix entries apart) → its `-m` marker expression."""
    selections: dict[str, str] = {}
    for name, job in load_workflow()["jobs"].items():
        entries = job.get("strategy", {}).get("matrix", {}).get("include", [{}])
        for step in steps(job):
            if not re.search(r"(?<![\w-])make test\b", step.get("run", "")):
                continue
            for entry in entries:
                options = with_matrix(step.get("env", {}).get("PYTEST_ADDOPTS", ""), entry)
                words = shlex.split(options)
                assert "-m" in words, f"{name}: `make test` without -m runs every tier again"
                label = f"{name}[{entry['tier']}]" if "tier" in entry else name
                selections[label] = words[words.index("-m") + 1]
    return selections


def test_test_jobs_run_every_tier_exactly_once() -> None:
    selections = tier_selections()
    declared = [
        line.split(":")[0].strip()
        for line in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"][
            "ini_options"
        ]["markers"]
    ]
    named = {
        word
        for expression in selections.values()
        for word in re.findall(r"[A-Za-z_]\w*", expression)
        if word not in EXPRESSION_WORDS
    }
    markers = sorted(set(declared) | named | {"containers"})
    compiled = {job: Expression.compile(expr) for job, expr in selections.items()}
    # Every combination of markers a test can carry goes to exactly one job.
    for size in range(len(markers) + 1):
        for carried in itertools.combinations(markers, size):

            def carries(name: str, /, **_: str | int | bool | None) -> bool:
                return name in carried  # noqa: B023 (used at once, within this iteration)

            chosen = [job for job, expr in compiled.items() if expr.evaluate(carries)]
            assert len(chosen) == 1, f"a test marked {carried or 'with nothing'} runs in {chosen}"


def test_coverage_floor_is_checked_once_over_all_tiers() -> None:
    jobs = load_workflow()["jobs"]
    measured = [
        name
        for name, job in jobs.items()
        if "--cov-fail-under=0" in str(job) and "coverage-" in str(job)
    ]
    assert measured, "the test jobs upload their coverage data"
    [report] = [job for job in jobs.values() if "coverage report" in run_text(job)]
    needs = report.get("needs", [])
    assert set(measured) <= set([needs] if isinstance(needs, str) else needs)


def bake_steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [step["with"] for step in steps(job) if step.get("uses", "").startswith("docker/bake")]


def test_images_job_builds_every_compose_image_with_a_layer_cache() -> None:
    built = {name for name, service in compose_services().items() if "build" in service}
    jobs = load_workflow()["jobs"]
    [bake] = bake_steps(jobs["images"])
    assert bake["files"] == COMPOSE.name
    targets = set(bake["targets"].split(","))
    assert targets == built
    overrides = bake["set"].split()
    for target in targets:
        assert f"{target}.cache-from=type=gha,scope={target}" in overrides, target
        assert f"{target}.cache-to=type=gha,scope={target},mode=max" in overrides, target


def test_compose_job_runs_every_pipeline_stage_then_the_stack() -> None:
    services = compose_services()
    stages = [name for name, svc in services.items() if "pipeline" in svc.get("profiles", [])]
    stack = [name for name, svc in services.items() if "profiles" not in svc]
    job = load_workflow()["jobs"]["compose"]
    text = run_text(job)
    [loop] = re.findall(r"for stage in ([\w -]+); do", text)
    assert loop.split() == stages, "the stages in the compose file's order"
    assert 'docker compose --profile pipeline run --rm --no-deps -T "$stage"' in text
    assert "docker compose up -d --no-build --wait" in text
    # The images it runs are the ones it loaded from the cache: every image it needs.
    [bake] = bake_steps(job)
    needed = {name for name in [*stages, *stack] if "build" in services[name]}
    assert set(bake["targets"].split(",")) == needed and bake["load"] is True
    # The prediction goes through the frontend's published port, to the proxied API path.
    [port] = services["frontend"]["ports"]
    host_port = re.sub(r"\$\{\w+:-(\d+)\}", r"\1", str(port)).split(":")[0]
    assert f"http://127.0.0.1:{host_port}/v1/predict" in text


@pytest.mark.parametrize("service", ["collect", "process", "train", "api-service", "frontend"])
def test_compose_job_checks_every_image_runs_as_non_root(service: str) -> None:
    text = run_text(load_workflow()["jobs"]["compose"])
    [loop] = re.findall(r"for service in ([\w -]+); do", text)
    assert service in loop.split()
    assert '--entrypoint id "$service" -u' in text and 'test "$uid" != 0' in text
