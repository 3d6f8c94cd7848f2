"""Each container, installed alone into a fresh environment, runs its CLI and imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import BIN, REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# folder → (CLI package, the modules whose imports must all resolve)
CONTAINERS = {
    "data-collector": ("collector", "collector.collect, collector.sources.digits"),
    "data-processor": ("processor", "processor.process, common.tfrecord"),
    "model-training": ("trainer", "trainer.train, trainer.evaluate, trainer.register, wandb"),
    "api-service": ("api_service", "api_service.app, api_service.model"),
    "workflow": ("workflow", "workflow.cli, dvc.api"),
}

# Code run after the imports: the package data a wheel must carry.
CHECKS = {
    "data-collector": "assert collector.sources.digits.load_digits()[0].shape == (1797, 8, 8)",
}


def uv(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(BIN / "uv"), *args], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.parametrize("folder", CONTAINERS)
def test_container_installs_alone_and_runs(folder: str, tmp_path: Path) -> None:
    package, modules = CONTAINERS[folder]
    venv = tmp_path / "venv"
    uv("venv", "--quiet", "--python", sys.executable, str(venv))
    python = venv / "bin" / "python"
    uv(
        "pip",
        "install",
        "--quiet",
        "--python",
        str(python),
        "--constraint",
        str(REPO / "requirements/lock.txt"),
        # As make setup and the images install: the bounds overrides.txt lifts stay lifted.
        "--override",
        str(REPO / "requirements/overrides.txt"),
        str(REPO / "src/common"),
        str(REPO / "src" / folder),
    )
    result = subprocess.run(
        [str(python), "-m", package, "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Usage" in result.stdout
    imported = subprocess.run(
        [str(python), "-c", f"import {modules}\n{CHECKS.get(folder, '')}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]

    installed = {
        line.split("==")[0].lower()
        for line in uv("pip", "freeze", "--python", str(python)).stdout.splitlines()
    }
    if folder in {"api-service", "data-processor", "data-collector"}:
        assert not {"tensorflow", "tensorflow-cpu", "keras"} & installed, f"{folder} pulls TF"
    if folder == "api-service":
        assert "ai-edge-litert" in installed
    if folder == "data-collector":
        assert not {"scikit-learn", "scipy"} & installed, "the digits ship with the collector"
    if folder != "workflow":
        assert "dvc" not in installed, "containers do not need DVC"
