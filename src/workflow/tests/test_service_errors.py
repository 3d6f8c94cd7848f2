"""`mega` when Cloud Storage fails: one line naming the service, no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from service_stubs import QUICK_BUDGET, assert_one_line_service_error, service_fault
from support import free_port, write_params

from common.services import EXIT_UNAVAILABLE

__all__ = ["service_fault"]  # the fixture, imported for pytest

MEGA = str(Path(sys.executable).parent / "mega")
COLLECT_FROM_GCS = """\
stages:
  collect:
    cmd: python -m collector --out data/raw/photos --no-progress
    outs:
      - data/raw/photos
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A DVC project (no git) whose one stage collects from gs://."""
    write_params(tmp_path, {"collect": {"source": "gcs", "uri": "gs://test-bucket/photos"}})
    (tmp_path / "dvc.yaml").write_text(COLLECT_FROM_GCS)
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True
    )
    return tmp_path


def mega(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MEGA, *args],
        cwd=cwd,
        env={**os.environ, **QUICK_BUDGET, "COLUMNS": "80", **env},
        capture_output=True,
        text=True,
        timeout=200,  # a safety net only; the service budget ends the wait
    )


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_status_with_an_unreachable_gs_registry(service_fault: str, project: Path) -> None:
    env = {"STORAGE_EMULATOR_HOST": service_fault, "MEGA_MODELS_ROOT": "gs://test-bucket/models"}
    result = mega(["status"], project, env)
    assert_one_line_service_error(
        result, "mega", f"Cloud Storage emulator at {service_fault} (gs://test-bucket)"
    )


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_stage_failing_on_a_service_shows_its_one_line(project: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    result = mega(["collect"], project, {"STORAGE_EMULATOR_HOST": closed})
    output = result.stdout + result.stderr
    # The stage's own status, as documented: 69, a service is unavailable (was 1).
    assert result.returncode == EXIT_UNAVAILABLE, output
    assert "Traceback" not in output
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(f"collect: error: Cloud Storage emulator at {closed}"), line
    assert "unreachable" in line and "(full log: .mega/logs/" in line


@pytest.fixture
def project_with_gs_remote(tmp_path: Path) -> Path:
    """A DVC project (no git) whose collected data is recorded, with a gs:// default remote."""
    write_params(tmp_path)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  collect:\n    cmd: mkdir -p data/raw/x && echo hi > data/raw/x/a.txt\n"
        "    outs:\n      - data/raw/x\n"
    )
    dvc = [sys.executable, "-m", "dvc"]
    for args in (
        ["init", "--no-scm", "-q"],
        ["repro", "-q"],
        ["remote", "add", "--default", "gcs", "gs://test-bucket/store"],
    ):
        subprocess.run([*dvc, *args], cwd=tmp_path, check=True, capture_output=True)
    return tmp_path


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("service_fault", ["refused", "hang"], indirect=True)
@pytest.mark.parametrize("command", ["push", "pull"])
def test_data_push_and_pull_to_an_unreachable_gs_remote(
    service_fault: str, command: str, project_with_gs_remote: Path
) -> None:
    result = mega(
        ["data", command], project_with_gs_remote, {"STORAGE_EMULATOR_HOST": service_fault}
    )
    line = assert_one_line_service_error(
        result, "mega", f"Cloud Storage emulator at {service_fault} (gs://test-bucket)"
    )
    assert "unreachable" in line


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_data_push_to_a_reachable_gs_remote_still_works(
    storage_emulator: str, project_with_gs_remote: Path
) -> None:
    result = mega(["data", "push"], project_with_gs_remote, {})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "files pushed" in result.stdout, result.stdout
