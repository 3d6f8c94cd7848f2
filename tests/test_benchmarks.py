"""Every benchmark script at least imports: `make bench` must not die on a stale name."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from support import REPO

SCRIPTS = sorted((REPO / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_imports_and_has_a_main(script: Path) -> None:
    # Regression: benchmarks/train.py imported a name common.tfrecord no longer had.
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main)
