"""ImageNet weights from a host that accepts and never answers, or says no: a clear error."""

import importlib
from pathlib import Path

import pytest
from service_stubs import QUICK_BUDGET, service_fault

from common.contracts import Preprocess
from common.settings import get_settings
from trainer import model as models

__all__ = ["service_fault"]  # the fixture, imported for pytest


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("service_fault", ["hang", "401", "403"], indirect=True)
def test_weights_download_that_fails_is_bounded_and_clear(
    service_fault: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in QUICK_BUDGET.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # nothing cached
    backbone = models.BACKBONES["mobilenet_v3_small"]
    # Keras' own constant, so that its download goes to the stub too.
    module = importlib.import_module(backbone.weights_module)
    monkeypatch.setattr(module, backbone.weights_url_attr, f"{service_fault}/weights/")
    spec = Preprocess(image_size=16, color_mode="grayscale")
    with pytest.raises(models.WeightsUnavailableError, match=r"train\.weights: none") as caught:
        models.build_model("mobilenet_v3_small", spec, 10, weights="imagenet")
    assert "could not be downloaded" in str(caught.value)
    assert "\n" not in str(caught.value)
    get_settings.cache_clear()
