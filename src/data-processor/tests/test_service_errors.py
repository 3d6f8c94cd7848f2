"""Processed data on gs:// whose Cloud Storage fails: one line, exit 69, no traceback."""

from pathlib import Path

import pytest
from service_stubs import assert_one_line_service_error, run_module, service_fault
from support import write_params

__all__ = ["service_fault"]  # the fixture, imported for pytest


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_gcs_raw_store_that_fails_is_one_line(service_fault: str, tmp_path: Path) -> None:
    write_params(tmp_path)
    args = ["--raw", "gs://test-bucket/raw/digits", "--out", "data/processed/digits"]
    result = run_module("processor", args, tmp_path, {"STORAGE_EMULATOR_HOST": service_fault})
    assert_one_line_service_error(
        result, "process", f"Cloud Storage emulator at {service_fault} (gs://test-bucket)"
    )
