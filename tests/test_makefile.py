"""`make setup` says what it is doing before each step that can take a while, and
leaves a venv whose libraries are compiled to bytecode."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Steps that download or install: minutes on a first run with a cold cache.
LONG_STEP = re.compile(r"-m venv |pip install")


def setup_plan() -> list[str]:
    """The commands `make setup` runs on a fresh clone, one line each (continuations joined).

    -n prints every command (also the silent `@` ones) without running it; -B as on a
    fresh clone, where the environment is still to be built.
    """
    plan = subprocess.run(
        ["make", "-n", "-B", "setup"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return plan.replace("\\\n", " ").splitlines()


def test_setup_announces_each_long_step() -> None:
    plan = setup_plan()
    long_steps = [i for i, line in enumerate(plan) if LONG_STEP.search(line)]
    assert len(long_steps) >= 3, plan
    for index in long_steps:
        before = plan[index - 1] if index else ""
        assert re.match(r'echo "setup: .+"', before), f"no message before: {plan[index]}"


def test_setup_asks_uv_to_compile_what_it_installs() -> None:
    # Where PYTHONDONTWRITEBYTECODE is unset, imports write the bytecode the test below
    # looks for, so only this one notices the flag missing there.
    installs = [line for line in setup_plan() if "uv pip install" in line]
    assert installs and all("--compile-bytecode" in line for line in installs), installs


@pytest.mark.parametrize("module", ["fastapi", "numpy", "pydantic", "tensorflow"])
def test_setup_installs_the_libraries_with_their_bytecode(module: str) -> None:
    """`make setup` compiles what it installs: with PYTHONDONTWRITEBYTECODE set, nothing
    writes .pyc later, and every process would recompile every module it imports."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    cached = Path(importlib.util.cache_from_source(spec.origin))
    assert cached.exists(), (
        f"{module} has no bytecode in this venv ({cached} is missing): it was built "
        "without --compile-bytecode; rebuild it with `rm -rf .venv && make setup`"
    )
