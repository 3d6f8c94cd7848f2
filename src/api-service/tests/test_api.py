import io
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support import RunningApi, TinyPipeline, launch_api


@pytest.fixture(scope="module")
def client(tiny_pipeline: TinyPipeline) -> TestClient:
    with launch_api(tiny_pipeline.models, model_name="digits-cnn") as api:
        yield api.client


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["model_version"] == "1"


def test_model_info(client: TestClient) -> None:
    info = client.get("/v1/model").json()
    assert info["name"] == "digits-cnn"
    assert info["labels"] == [str(d) for d in range(10)]
    assert {k: info["input"][k] for k in ("image_size", "color_mode")} == {
        "image_size": 16,
        "color_mode": "grayscale",
    }
    assert info["metrics"]["test"]["accuracy"] >= 0.8


def test_predicts_test_digits(client: TestClient, tiny_pipeline: TinyPipeline) -> None:
    samples = tiny_pipeline.test_images()[:30]
    correct = 0
    for path, label in samples:
        response = client.post(
            "/v1/predict", files={"file": (path.name, path.read_bytes(), "image/png")}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"label", "confidence", "probabilities", "model_version"}
        assert body["probabilities"][body["label"]] == body["confidence"]
        assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        correct += body["label"] == label
    assert correct >= 0.8 * len(samples)


def test_large_color_photo_is_accepted(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (30, 200, 90)).save(buffer, format="JPEG")
    response = client.post(
        "/v1/predict", files={"file": ("photo.jpg", buffer.getvalue(), "image/jpeg")}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("content", "code"),
    [(b"", "invalid_image"), (b"plain text", "invalid_image")],
)
def test_bad_uploads_get_json_errors(client: TestClient, content: bytes, code: str) -> None:
    response = client.post("/v1/predict", files={"file": ("x.png", content, "image/png")})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code


def test_missing_file_field(client: TestClient) -> None:
    response = client.post("/v1/predict", files={"other": ("x.png", b"x", "image/png")})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_too_large_upload(tiny_pipeline: TinyPipeline) -> None:
    with launch_api(tiny_pipeline.models, max_upload_bytes=100) as small:
        response = small.client.post(
            "/v1/predict", files={"file": ("x.png", b"0" * 1000, "image/png")}
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


def test_without_a_model_the_service_stays_up_and_not_ready(tmp_path: Path) -> None:
    with launch_api(tmp_path) as empty:
        assert empty.client.get("/healthz").status_code == 200
        ready = empty.client.get("/readyz")
        assert ready.status_code == 503
        assert "mega run" in ready.json()["error"]["message"]
        assert empty.client.post("/v1/predict", files={"file": ("x.png", b"x")}).status_code == 503


def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.integration
def test_live_server_serves_api_and_page(live_api: RunningApi, tiny_pipeline: TinyPipeline) -> None:
    path, _ = tiny_pipeline.test_images()[0]
    with path.open("rb") as handle:
        response = httpx.post(f"{live_api.url}/v1/predict", files={"file": handle}, timeout=10)
    assert response.status_code == 200
    page = httpx.get(f"{live_api.url}/", timeout=5)
    assert page.status_code == 200
    assert "<title>" in page.text
    assert httpx.get(f"{live_api.url}/app.js", timeout=5).status_code == 200
