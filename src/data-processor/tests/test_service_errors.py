"""Processed data on gs:// whose Cloud Storage fails: one line, exit 69, no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from service_stubs import QUICK_BUDGET, assert_one_line_service_error, service_fault
from support import write_params

__all__ = ["service_fault"]  # the fixture, imported for pytest


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_gcs_raw_store_that_fails_is_one_line(service_fault: str, tmp_path: Path) -> None:
    write_params(tmp_path)
    env = {**os.environ, **QUICK_BUDGET, "STORAGE_EMULATOR_HOST": service_fault}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "processor",
            "--raw",
            "gs://test-bucket/raw/digits",
            "--out",
            "data/processed/digits",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,  # a safety net only; the service budget ends the wait
    )
    assert_one_line_service_error(
        result, "processor", f"Cloud Storage emulator at {service_fault} (gs://test-bucket)"
    )
