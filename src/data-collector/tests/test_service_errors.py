"""A gs:// source whose Cloud Storage fails: one line, exit 69, no traceback."""

from pathlib import Path

import pytest
from service_stubs import assert_one_line_service_error, run_module, service_fault
from support import write_params

__all__ = ["service_fault"]  # the fixture, imported for pytest


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_gcs_source_that_fails_is_one_line(service_fault: str, tmp_path: Path) -> None:
    write_params(tmp_path, {"collect": {"source": "gcs", "uri": "gs://test-bucket/photos"}})
    args = ["--out", "data/raw/photos", "--no-progress"]
    result = run_module("collector", args, tmp_path, {"STORAGE_EMULATOR_HOST": service_fault})
    assert_one_line_service_error(
        result, "collect", f"Cloud Storage emulator at {service_fault} (gs://test-bucket)"
    )
    assert not (tmp_path / "data/raw/photos/manifest.jsonl").exists()
