"""A gs:// registry whose Cloud Storage fails: the service stays up and says why in one line."""

import logging

import pytest
from service_stubs import QUICK_BUDGET, service_fault

from api_service.manager import ModelManager
from api_service.monitoring import Metrics
from api_service.settings import ServingSettings as Settings
from common import storage

__all__ = ["service_fault"]  # the fixture, imported for pytest


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_unreachable_gs_registry_is_a_one_line_load_error(
    service_fault: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    for name, value in QUICK_BUDGET.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", service_fault)
    storage.gcs_client.cache_clear()
    from common.settings import get_settings

    get_settings.cache_clear()
    manager = ModelManager(Settings(models_root="gs://test-bucket/models"), Metrics())
    with caplog.at_level(logging.ERROR):
        manager.check()  # returns: a server keeps running and reports, it does not exit
    assert manager.active is None
    assert manager.load_error is not None
    message = manager.load_error["message"]
    assert message.startswith(f"Cloud Storage emulator at {service_fault} (gs://test-bucket)")
    assert "\n" not in message
    expected = (
        "credentials"
        if request.node.callspec.params["service_fault"] in ("401", "403")
        else "unreachable"
    )
    assert expected in message
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is None  # one line in the log, no traceback
    get_settings.cache_clear()
    storage.gcs_client.cache_clear()
