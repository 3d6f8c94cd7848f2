"""The whole pipeline through the `mega` CLI, in a fresh project folder, then served.

The project is built and run once (`first_run`); each test that changes it (params,
the registry) gets it back as it was from the `restored` fixture, so the tests pass
in any order and alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import GIT_IDENTITY, REPO, TINY_PARAMS, free_port, launch_api, write_params

from processor.process import assign_split

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MEGA = str(Path(sys.executable).parent / "mega")
DEFAULT_PARAMS = {"train": {"tracking": "wandb"}}
REGISTRY = "models/digits-cnn"


def sh(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **GIT_IDENTITY, "COLUMNS": "200", "MEGA_WANDB_MODE": "offline"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the template's pipeline files in a new git + DVC repository."""
    root = tmp_path_factory.mktemp("project")
    shutil.copy(REPO / "dvc.yaml", root)
    ignore = shutil.ignore_patterns("__pycache__", "tests", "*.egg-info")
    shutil.copytree(REPO / "src", root / "src", ignore=ignore)
    write_params(root, DEFAULT_PARAMS)
    sh(["git", "init", "-q"], root)
    sh([sys.executable, "-m", "dvc", "init", "-q"], root)
    sh([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], root)
    shutil.copy(REPO / ".dvcignore", root)  # the template's, not `dvc init`'s
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "template"], root)
    return root


@pytest.fixture(scope="module")
def first_run(project: Path) -> subprocess.CompletedProcess[str]:
    """The project's first `mega run`: every stage runs and version 1 is registered."""
    return sh([MEGA, "run"], project)


@pytest.fixture
def restored(project: Path, first_run: object, tmp_path: Path) -> Iterator[Path]:
    """The run project; afterwards its params, outputs and registry as they were before."""
    saved = tmp_path / "registry"
    shutil.copytree(project / REGISTRY, saved)
    yield project
    write_params(project, DEFAULT_PARAMS)
    sh([MEGA, "run"], project)  # outputs of the default params, from DVC's run cache
    shutil.rmtree(project / REGISTRY, ignore_errors=True)
    shutil.copytree(saved, project / REGISTRY)


def test_mega_run_builds_and_registers_a_model(
    project: Path, first_run: subprocess.CompletedProcess[str]
) -> None:
    result = first_run
    assert "ran: collect, process, train, evaluate, optimize, register" in result.stdout
    assert "production model" in result.stdout
    assert "digits-cnn version 1" in result.stdout
    # The promoted version's metrics.json, as register writes it, reads as the
    # candidate's: the summary's metrics row is production's, not "candidate metrics".
    assert "test metrics" in result.stdout and "candidate metrics" not in result.stdout
    assert "digits-cnn version 1 · test accuracy 0." in result.stdout

    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.8
    aliases = json.loads((project / "models/digits-cnn/aliases.json").read_text())
    version = project / "models/digits-cnn" / aliases["production"]
    assert (version / "saved_model/saved_model.pb").is_file()
    assert (version / "model.tflite").is_file()
    lineage = json.loads((version / "lineage.json").read_text())
    assert len(lineage["git_sha"]) == 40
    assert lineage["wandb_run_id"]
    assert (project / "dvc.lock").is_file()


def test_second_run_reruns_nothing(project: Path, first_run: object) -> None:
    # Whether anything re-ran is read from the summary, not from a wall-clock bound.
    result = sh([MEGA, "run"], project)
    assert "ran:" not in result.stdout
    assert (
        "up to date, skipped: collect, process, train, evaluate, optimize, register"
        in result.stdout
    )


def test_status_reports_everything_up_to_date(project: Path, first_run: object) -> None:
    out = sh([MEGA, "status"], project).stdout
    assert out.count("up to date") == 6
    assert "production model: digits-cnn version 1" in out


def test_changed_training_param_reruns_from_train(restored: Path) -> None:
    write_params(restored, {"train": {"tracking": "wandb", "epochs": 5}})
    out = sh([MEGA, "status"], restored).stdout
    assert "train      changed" in out
    assert "collect    up to date" in out
    write_params(restored, DEFAULT_PARAMS)
    assert sh([MEGA, "status"], restored).stdout.count("up to date") == 6


def test_changed_processing_param_reruns_process_and_later_not_collect(restored: Path) -> None:
    write_params(restored, {**DEFAULT_PARAMS, "process": {"resize": "pad"}})
    out = sh([MEGA, "run"], restored).stdout
    assert "ran: process, train, evaluate, optimize, register" in out
    assert "up to date, skipped: collect" in out


def test_mega_serve_answers_predictions(project: Path, first_run: object) -> None:
    port = free_port()
    # `mega serve` takes the port and the registry from the same MEGA_* settings.
    with launch_api(
        project / "models", live=True, command=[MEGA, "serve"], cwd=project, serve_port=port
    ) as server:
        url = server.url
        ratios = TINY_PARAMS["process"]["split"]
        manifest = [
            json.loads(line)
            for line in (project / "data/raw/digits/manifest.jsonl").read_text().splitlines()
        ]
        test_items = [row for row in manifest if assign_split(row["sha256"], ratios) == "test"][:25]
        correct = 0
        for row in test_items:
            image = project / "data/raw/digits" / row["path"]
            response = httpx.post(
                f"{url}/v1/predict", files={"file": (image.name, image.read_bytes())}, timeout=10
            )
            assert response.status_code == 200, response.text
            correct += response.json()["label"] == row["label"]
        assert correct >= 0.8 * len(test_items)
        assert "<title>" in httpx.get(url, timeout=5).text


def test_a_deleted_registry_is_filled_again_by_mega_run(restored: Path) -> None:
    # Regression: DVC considered `register` done, so the registry stayed empty.
    shutil.rmtree(restored / REGISTRY)
    out = sh([MEGA, "run"], restored).stdout
    assert "registering the candidate" in out
    assert "ran: register" in out
    aliases = json.loads((restored / REGISTRY / "aliases.json").read_text())
    assert aliases["production"] == "1"
    assert "ran:" not in sh([MEGA, "run"], restored).stdout


def test_outside_a_project_mega_says_where_to_run(tmp_path: Path) -> None:
    result = subprocess.run(
        [MEGA, "run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("mega: error: no dvc.yaml in ")
    assert "run mega from the project root" in result.stderr
