"""POST /v1/predict is answered before the router, as the route would answer it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.responses import Response
from fastapi.testclient import TestClient
from support import TinyPipeline, launch_api

from api_service import fast_path
from api_service.errors import ApiError, ErrorCode
from api_service.fast_path import PredictFastPath
from api_service.routes import PREDICT_PATH


class Inner:
    """The app behind the fast path: records that it was called."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1


def run(layer: PredictFastPath, **scope: Any) -> list[dict[str, Any]]:
    """Call `layer` with an HTTP scope; the messages it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    base = {"type": "http", "method": "POST", "path": PREDICT_PATH, "headers": []}
    asyncio.run(layer({**base, **scope}, receive, send))
    return sent


def test_predict_never_reaches_the_router_and_is_labelled_with_its_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = {}

    async def answer(request: Any) -> Response:
        seen["route"] = request.scope["route"].path
        return Response(b"{}", media_type="application/json")

    monkeypatch.setattr(fast_path, "predict_response", answer)
    inner = Inner()
    sent = run(PredictFastPath(inner))
    assert inner.calls == 0
    assert sent[0]["status"] == 200
    assert seen["route"] == PREDICT_PATH  # what the access log and the metrics read


def test_an_api_error_gets_the_services_error_body(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(request: Any) -> Response:
        raise ApiError(503, ErrorCode.MODEL_UNAVAILABLE, "no model loaded: loading")

    monkeypatch.setattr(fast_path, "predict_response", refuse)
    sent = run(PredictFastPath(Inner()))
    assert sent[0]["status"] == 503
    assert sent[1]["body"] == (
        b'{"error":{"code":"model_unavailable","message":"no model loaded: loading"}}'
    )


@pytest.mark.parametrize(
    "scope",
    [
        {"method": "GET"},
        {"path": "/v1/predict/batch"},
        {"root_path": "/api"},
        {"type": "websocket"},
    ],
)
def test_other_requests_go_on_to_the_app(scope: dict[str, str]) -> None:
    inner = Inner()
    run(PredictFastPath(inner), **scope)
    assert inner.calls == 1


@pytest.fixture(scope="module")
def client(tiny_pipeline: TinyPipeline) -> Any:
    with launch_api(tiny_pipeline.models, model_poll_seconds=0) as api:
        yield api.client


def test_a_form_the_fast_reader_leaves_is_answered_alike(
    client: TestClient, tiny_pipeline: TinyPipeline
) -> None:
    path, _ = tiny_pipeline.test_images()[0]
    image = (path.name, path.read_bytes(), "image/png")
    alone = client.post(PREDICT_PATH, files={"file": image})
    # A second part sends the request through Starlette's parser; the first file answers.
    with_field = client.post(PREDICT_PATH, files={"file": image}, data={"note": "x"})
    assert alone.status_code == with_field.status_code == 200
    assert alone.json() == with_field.json()
    wrong_method = client.get(PREDICT_PATH)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
