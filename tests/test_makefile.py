"""`make setup` says what it is doing before each step that can take a while."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Steps that download or install: minutes on a first run with a cold cache.
LONG_STEP = re.compile(r"-m venv |pip install")


def test_setup_announces_each_long_step() -> None:
    # -n prints every command (also the silent `@` ones) without running it; -B as on a
    # fresh clone, where the environment is still to be built.
    plan = subprocess.run(
        ["make", "-n", "-B", "setup"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    long_steps = [i for i, line in enumerate(plan) if LONG_STEP.search(line)]
    assert len(long_steps) >= 3, plan
    for index in long_steps:
        before = plan[index - 1] if index else ""
        assert re.match(r'echo "setup: .+"', before), f"no message before: {plan[index]}"
