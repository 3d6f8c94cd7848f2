"""Issue 14: the API serves whatever variant a version holds, integer input included,
and `GET /v1/model` carries the version's optimization table."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from support import launch_api
from variant_models import LABELS, SIZE, convert, export, make_candidate

from api_service.model import Engine
from common.images import quantize

MODEL = "variants"


def png(value: int) -> bytes:
    """An 8×8 grayscale PNG of one shade."""
    out = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE), value, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def register(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`python -m trainer register` of the tiny candidate into root/models."""
    (root / "params.yaml").write_text(yaml.safe_dump({"registry": {"model_name": MODEL}}))
    args = ["--model", "candidate", "--metrics", "metrics.json", "--registry", "models"]
    return subprocess.run(
        [sys.executable, "-m", "trainer", "register", *args, *extra],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module", params=["uint8", "int8"])
def registered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry whose production version serves the int8 variant (`param` input type)."""
    root = tmp_path_factory.mktemp(f"variant-{request.param}")
    make_candidate(root, request.param)
    result = register(root, "--optimized", "optimized")
    assert result.returncode == 0, result.stderr
    return root / "models"


def test_an_integer_variant_is_served_end_to_end(registered: Path) -> None:
    with launch_api(registered, model_poll_seconds=0, model_name=MODEL) as api:
        for shade, label in ((0, "dark"), (255, "bright"), (20, "dark"), (230, "bright")):
            files = {"file": ("x.png", png(shade), "image/png")}
            answer = api.client.post("/v1/predict", files=files)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["label"] == label, (shade, body)
            assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
            assert body["confidence"] > 0.9


def test_the_model_description_carries_the_optimization_rows(registered: Path) -> None:
    with launch_api(registered, model_poll_seconds=0, model_name=MODEL) as api:
        info = api.client.get("/v1/model").json()
    rows = {row["name"]: row for row in info["optimization"]}
    assert set(rows) == {"float32", "int8"}
    assert rows["int8"]["served"] and not rows["float32"]["served"]
    # register timed every variant when it published the version
    assert all(row["latency_p50_ms"] > 0 and row["throughput_per_s"] > 0 for row in rows.values())
    # The version's model.tflite is the int8 file the served row describes.
    assert rows["int8"]["bytes"] == (registered / MODEL / "1" / "model.tflite").stat().st_size


def test_a_version_without_optimization_has_no_table(tmp_path: Path) -> None:
    make_candidate(tmp_path)
    assert register(tmp_path).returncode == 0
    with launch_api(tmp_path / "models", model_poll_seconds=0, model_name=MODEL) as api:
        info = api.client.get("/v1/model").json()
        answer = api.client.post("/v1/predict", files={"file": ("x.png", png(255), "image/png")})
    assert info["optimization"] is None
    assert answer.json()["label"] == "bright"


@pytest.mark.parametrize("kind", ["float16", "dynamic", "uint8", "int8"])
def test_every_kind_of_variant_gives_the_float_models_probabilities(
    kind: str, tmp_path: Path
) -> None:
    """Float16 and dynamic-range models keep float32 input and output; full-integer ones
    take quantized pixels and give quantized scores: the engine answers float32
    probabilities for all, matching float32's within a few quantization steps."""
    saved = export(tmp_path)
    (tmp_path / "float32.tflite").write_bytes(convert(saved, "float32"))
    (tmp_path / f"{kind}.tflite").write_bytes(convert(saved, kind))
    pixels = np.random.default_rng(1).integers(0, 256, (5, SIZE, SIZE, 1)).astype(np.uint8)
    pixels[0], pixels[1] = 0, 255  # the extremes of the input range
    shape = (SIZE, SIZE, 1)
    served = Engine(tmp_path / f"{kind}.tflite", shape, 1, 4).predict_batch(pixels)
    float32 = Engine(tmp_path / "float32.tflite", shape, 1, 4).predict_batch(pixels)
    assert served.dtype == np.float32 and served.shape == (5, len(LABELS))
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(served, float32, atol=0.05)


def test_quantizing_uses_scale_and_zero_point_and_clips_to_the_type() -> None:
    pixels = np.array([0.0, 1.0, 3.0, 254.0, 255.0], np.float32)
    int8 = quantize(pixels, 2.0, -128, np.dtype(np.int8))
    assert int8.dtype == np.int8 and int8.tolist() == [-128, -128, -126, -1, 0]
    uint8 = quantize(pixels, 0.5, 10, np.dtype(np.uint8))  # beyond 255 is clipped, not wrapped
    assert uint8.tolist() == [10, 12, 16, 255, 255]


def test_an_unreadable_table_leaves_the_model_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The table is a description: a broken one costs the table (one warning), not the model."""
    make_candidate(tmp_path)
    assert register(tmp_path, "--optimized", "optimized").returncode == 0
    (tmp_path / "models" / MODEL / "1" / "optimization.json").write_text("{broken")
    with launch_api(tmp_path / "models", model_poll_seconds=0, model_name=MODEL) as api:
        info = api.client.get("/v1/model").json()
        answer = api.client.post("/v1/predict", files={"file": ("x.png", png(0), "image/png")})
    assert info["optimization"] is None and answer.json()["label"] == "dark"
    assert "no optimization table on /v1/model" in caplog.text
