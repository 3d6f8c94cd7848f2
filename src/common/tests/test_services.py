"""Cloud Storage that cannot be reached or says no: a one-line ServiceError, bounded in time."""

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from service_stubs import QUICK_BUDGET, service_fault

from common import storage
from common.services import ServiceError
from common.settings import get_settings

__all__ = ["service_fault"]  # the fixture, imported for pytest

OPERATIONS: dict[str, Callable[[str], Any]] = {
    "read": storage.read_bytes,
    "write": lambda uri: storage.write_bytes(uri, b"x"),
    "exists": storage.exists,
    "list": lambda uri: list(storage.list_files(uri)),
    "delete": storage.delete,
}


@pytest.fixture
def quick_budget(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in QUICK_BUDGET.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    storage.gcs_client.cache_clear()
    yield
    get_settings.cache_clear()
    storage.gcs_client.cache_clear()


def threads_left(before: set[threading.Thread], grace_s: float = 1.0) -> list[str]:
    """Names of the threads started since `before` that are still alive after `grace_s`."""
    deadline = time.monotonic() + grace_s
    while True:
        left = sorted(t.name for t in set(threading.enumerate()) - before if t.is_alive())
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_service_error_is_one_line_naming_service_and_fix() -> None:
    error = ServiceError("W&B (http://x)", "unreachable: a\nlong\ntrace", "use offline")
    assert str(error) == "W&B (http://x): unreachable: a; use offline"


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_gcs_failure_is_a_service_error(
    service_fault: str,
    operation: str,
    quick_budget: None,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", service_fault)
    storage.gcs_client.cache_clear()
    before = set(threading.enumerate())
    with pytest.raises(ServiceError) as caught:
        OPERATIONS[operation]("gs://test-bucket/models/x.json")
    # The budget ends all the work: nothing keeps retrying in the background (the
    # client's own bucket-metadata fetch did, for up to 120 s).
    assert threads_left(before) == []
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"Cloud Storage emulator at {service_fault} (gs://test-bucket)")
    if request.node.callspec.params["service_fault"] in ("401", "403"):
        # 401 makes the client try to refresh the credentials; 403 is a plain refusal.
        assert "denied" in message or "no usable credentials" in message
        assert "gcloud auth application-default login" in message
    else:
        assert "unreachable" in message and "network" in message


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_stopped_emulator_is_a_service_error(
    storage_emulator_process: tuple[str, subprocess.Popen[bytes]], quick_budget: None
) -> None:
    bucket, process = storage_emulator_process
    storage.write_text(f"{bucket}/a.txt", "hello")
    assert storage.read_text(f"{bucket}/a.txt") == "hello"
    process.terminate()
    process.wait(timeout=10)
    with pytest.raises(ServiceError, match=r"Cloud Storage emulator at .*: unreachable"):
        storage.read_text(f"{bucket}/a.txt")


@pytest.mark.integration
def test_gcs_calls_leave_no_work_in_the_background(
    storage_emulator: str, quick_budget: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each call is the requests it makes, within its budget: no thread of the client's
    # own (its bucket-metadata fetch was one) runs on after it returns.
    started: list[str] = []
    start = threading.Thread.start

    def recording_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    uri = f"{storage_emulator}/background/a.txt"
    storage.write_text(uri, "hello")
    assert storage.read_text(uri) == "hello"
    assert storage.exists(uri)
    assert list(storage.list_files(f"{storage_emulator}/background"))
    storage.delete(uri)
    assert started == []


def test_missing_objects_and_local_files_stay_file_errors(
    storage_emulator: str, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{storage_emulator}/nothing-here")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(tmp_path / "absent")
