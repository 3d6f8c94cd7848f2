"""Each container declares exactly the distributions its code imports.

A container's image installs its pyproject's dependencies: one it never imports is
dead weight in the image, and one it imports without declaring works only while
another package happens to pull it in. The imports are read from the code (tests
excluded) and mapped to distributions with importlib.metadata.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Mapping
from functools import cache
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from support import REPO

CONTAINERS = sorted(path.parent for path in (REPO / "src").glob("*/pyproject.toml"))

# Declared but never imported, each for a reason the import graph cannot show.
NOT_IMPORTED = {
    ("workflow", "dvc-gs"): "DVC loads it as a plugin for gs:// remotes",
    ("model-training", "tensorboard"): "tf.summary (Keras's TensorBoard callback) runs on it",
}
# A container's tests that import another container's package, each for a reason.
TESTS_IMPORTING_ANOTHER = {
    ("model-training", "mega-api-service"): "test_params_chain.py follows parameters from "
    "training into serving (a cross-container test)",
}
# Imported but not declared, each for a reason.
NOT_DECLARED = {
    ("common", "tensorflow"): "common.tfrecord imports it lazily; only the trainer, "
    "which declares TensorFlow, calls that function",
}


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())


def packages(folder: Path) -> list[str]:
    return project(folder)["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]


def declared(folder: Path) -> set[str]:
    return {normalize(Requirement(r).name) for r in project(folder)["project"]["dependencies"]}


@cache
def local_packages() -> dict[str, str]:
    """Top-level package → distribution of the repository's own (editable) packages."""
    return {
        package: normalize(project(folder)["project"]["name"])
        for folder in CONTAINERS
        for package in packages(folder)
    }


def imported_modules(folder: Path) -> set[str]:
    """Every absolute module a container's code imports, at any depth, stdlib excluded.

    `from a.b import c` gives `a.b.c` (c may be a submodule), so a namespace
    package such as `google` resolves to the distribution that ships it.
    """
    return modules_in([folder / package for package in packages(folder)])


def modules_in(roots: list[Path]) -> set[str]:
    """The absolute non-stdlib modules that the Python files under `roots` import."""
    modules: set[str] = set()
    for root in roots:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names | {"__future__"}}


@cache
def top_level_distributions() -> Mapping[str, list[str]]:
    return packages_distributions()  # reads every installed distribution: once


@cache
def _ships(dist: str, path: str) -> bool:
    files = distribution(dist).files or []
    return any(str(f).startswith(path + "/") or str(f) == path + ".py" for f in files)


def distribution_of(module: str) -> str:
    """The installed distribution that provides `module` (the longest match wins)."""
    top = module.split(".")[0]
    if top in local_packages():
        return local_packages()[top]
    candidates = top_level_distributions().get(top, [])
    assert candidates, f"{module}: no installed distribution provides {top!r}"
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):  # namespace packages: narrow by the deepest path
        shipping = {c for c in candidates if _ships(c, "/".join(parts[:depth]))}
        if len(shipping) == 1:
            return normalize(shipping.pop())
    assert len(set(candidates)) == 1, f"{module}: ambiguous between {candidates}"
    return normalize(candidates[0])


@pytest.mark.parametrize("folder", CONTAINERS, ids=lambda p: p.name)
def test_container_declares_what_it_imports_and_nothing_else(folder: Path) -> None:
    own = {normalize(project(folder)["project"]["name"])}
    imports = {distribution_of(module) for module in imported_modules(folder)} - own
    deps = declared(folder)
    unused = {d for d in deps - imports if (folder.name, d) not in NOT_IMPORTED}
    undeclared = {d for d in imports - deps if (folder.name, d) not in NOT_DECLARED}
    assert not unused, f"{folder.name}/pyproject.toml declares what its code never imports"
    assert not undeclared, f"{folder.name} imports what its pyproject.toml does not declare"


def test_exceptions_still_apply() -> None:
    # An exception whose package left the pyproject or the code would hide the next one.
    for folder_name, dist in NOT_IMPORTED:
        assert dist in declared(REPO / "src" / folder_name), (folder_name, dist)
    for folder_name, dist in NOT_DECLARED:
        folder = REPO / "src" / folder_name
        assert dist in {distribution_of(m) for m in imported_modules(folder)}, (folder_name, dist)
        assert dist not in declared(folder), (folder_name, dist)
    for folder_name, dist in TESTS_IMPORTING_ANOTHER:
        assert dist in packages_tests_use(REPO / "src" / folder_name), (folder_name, dist)


def packages_tests_use(folder: Path) -> set[str]:
    """The repository's own distributions that a container's tests import."""
    tops = {module.split(".")[0] for module in modules_in([folder / "tests"])}
    return {local_packages()[top] for top in tops if top in local_packages()}


@pytest.mark.parametrize("folder", CONTAINERS, ids=lambda p: p.name)
def test_container_tests_use_no_other_container(folder: Path) -> None:
    # The processor's tests built their input with the collector: a change to one
    # container must not break another's unit tests. Input is built from common.
    others = set(local_packages().values()) - {
        normalize(project(folder)["project"]["name"]),
        "mega-common",
    }
    used = packages_tests_use(folder)
    allowed = {dist for (name, dist) in TESTS_IMPORTING_ANOTHER if name == folder.name}
    assert not (used & others) - allowed, f"{folder.name}/tests import another container"
