"""DVC re-runs a trainer stage only when a file in its `deps` changes: every trainer
module a stage runs must be listed there, or named below with why it cannot change
the stage's outputs. A module left out makes DVC call the old outputs up to date.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from support import REPO

PACKAGE = REPO / "src/model-training/trainer"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

# stage → (module the command runs, {module reached from it but not a dep: why})
ENTRIES: dict[str, tuple[str, dict[str, str]]] = {
    "train": (
        "train",
        {
            "budget": "only refuses a training that cannot fit in memory",
            "evaluate": "train uses its confusion matrix for the W&B log only",
            "plots": "reached through evaluate; train draws nothing",
            "quiet": "only silences native log lines",
        },
    ),
    "evaluate": (
        "evaluate",
        {
            "quiet": "only silences native log lines",
        },
    ),
    "optimize": (
        "optimize_stage",
        {
            "budget": "reached through prepare; optimize builds no model it must size",
            "quiet": "only silences native log lines",
        },
    ),
    # inputs.check_optimized returns the optimize stage's report register acts on
    "register": ("register", {"tracking": "logs the table to W&B; writes nothing register makes"}),
}


def trainer_imports(module: str) -> set[str]:
    """The trainer modules `module` imports anywhere in its source (also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "trainer":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainer."):
            found.add(node.module.split(".")[1])  # type: ignore[union-attr]
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("trainer.")}
    return found


def reachable(module: str) -> set[str]:
    seen, todo = {module}, [module]
    while todo:
        for name in trainer_imports(todo.pop()) - seen:
            seen.add(name)
            todo.append(name)
    return seen


def test_imports_are_followed_through_the_package() -> None:
    assert {"prepare", "runs", "data", "model", "export", "lineage"} <= reachable("train")
    assert "prepare" not in reachable("register")


@pytest.mark.parametrize("stage", ENTRIES)
def test_every_trainer_module_a_stage_runs_is_a_dependency(stage: str) -> None:
    entry, exempt = ENTRIES[stage]
    deps = {
        Path(dep).stem
        for dep in STAGES[stage]["deps"]
        if dep.startswith("src/model-training/trainer/")
    }
    missing = reachable(entry) - deps - set(exempt)
    assert not missing, (
        f"dvc.yaml stage {stage!r} runs trainer modules it does not list in deps: "
        + ", ".join(f"src/model-training/trainer/{name}.py" for name in sorted(missing))
    )
    assert not set(exempt) & deps, "a module is both a dependency and exempt"
    stale = set(exempt) - reachable(entry)
    assert not stale, f"exempt but not run by stage {stage!r} (drop the exemption): {stale}"
