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
from variant_models import LABELS, SIZE, make_candidate

from api_service.model import Engine

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


def test_every_variant_gives_the_float_models_probabilities(registered: Path) -> None:
    """The int8 engine's dequantized output matches float32's within quantization steps."""
    version = registered / MODEL / "1"
    optimized = registered.parent / "optimized"
    pixels = np.random.default_rng(1).integers(0, 256, (5, SIZE, SIZE, 1)).astype(np.uint8)
    served = Engine(version / "model.tflite", (SIZE, SIZE, 1), 1, 4).predict_batch(pixels)
    float32 = Engine(optimized / "float32.tflite", (SIZE, SIZE, 1), 1, 4).predict_batch(pixels)
    assert served.dtype == np.float32 and served.shape == (5, len(LABELS))
    np.testing.assert_allclose(served, float32, atol=0.05)
