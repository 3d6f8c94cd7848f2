"""The API's documentation pages work offline: every file they load comes from the app."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support import launch_api

# src="…", href="…", spec-url="…" (ReDoc) and the quoted URLs of inline scripts (the spec).
ASSET = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")
EXTERNAL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}""")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    # No model is needed for the documentation: an empty registry keeps this fast.
    models = Path(tmp_path_factory.mktemp("models"))
    with launch_api(models, model_poll_seconds=0) as api:
        yield api.client


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_loads_only_files_the_app_serves(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not EXTERNAL.search(html), f"{page} loads from outside: {EXTERNAL.findall(html)}"
    assets = {a or b for a, b in ASSET.findall(html)}
    scripts = {a for a in assets if a.endswith(".js")}
    assert scripts, f"{page} references no script: {html}"
    assert "/openapi.json" in assets
    for asset in sorted(assets):
        fetched = client.get(asset)
        assert fetched.status_code == 200, f"{page}: {asset} → {fetched.status_code}"
        assert fetched.content, f"{page}: {asset} is empty"


def test_swagger_bundle_understands_the_openapi_version(client: TestClient) -> None:
    """Swagger UI before 5 shows 'no valid version field' for OpenAPI 3.1, which FastAPI emits.

    Swagger UI 5's bundle exports its `isOAS31` selector by name; 4.x has none.
    """
    version = client.get("/openapi.json").json()["openapi"]
    assert version.startswith("3.1")
    bundle = next(a for a, _ in ASSET.findall(client.get("/docs").text) if a.endswith("bundle.js"))
    assert "isOAS31" in client.get(bundle).text
