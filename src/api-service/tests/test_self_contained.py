"""A registry version carries what serving needs: nothing is read from the processed data."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from support import TinyPipeline, launch_api

from api_service.model import training_class_counts
from common.registry import ModelRegistry

MODEL = "digits-cnn"


def test_a_version_copied_alone_serves_with_a_finite_drift_gauge(
    tiny_pipeline: TinyPipeline, tmp_path: Path
) -> None:
    """Only the version folder travels (as into a container): no data/, no project root."""
    root = tmp_path / "elsewhere" / "models"
    shutil.copytree(tiny_pipeline.models / MODEL / "1", root / MODEL / "1")
    ModelRegistry(root, MODEL).set_alias("production", "1")
    samples = tiny_pipeline.test_images()[:10]
    with launch_api(root, model_poll_seconds=0, drift_window=50) as api:
        client = api.client
        for path, _ in samples:
            response = client.post("/v1/predict", files={"file": (path.name, path.read_bytes())})
            assert response.status_code == 200, response.text
        text = client.get("/metrics").text
    drift = next(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mega_prediction_drift ")
    )
    assert not math.isnan(drift) and 0 <= drift < 1


def test_class_counts_come_from_the_version_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "training_classes.json").write_text('{"data_hash": "h", "counts": {"b": 4}}')
    assert training_class_counts(tmp_path, ["a", "b"]) == {"a": 0, "b": 4}
    (tmp_path / "training_classes.json").unlink()  # a version registered before the file
    assert training_class_counts(tmp_path, ["a", "b"]) is None
    assert "drift gauge stays NaN" in caplog.text and "Register the model again" in caplog.text
