"""A loopback stub of the Vertex AI REST API (v1 jobs), recording every request.

google-cloud-aiplatform's clients talk plain HTTP to it with
`api_endpoint="http://127.0.0.1:PORT"` and `transport="rest"` (MEGA_VERTEX_ENDPOINT for
`mega`). Bodies arrive as the API takes them: enums as integers, int64 as strings,
default values left out.

It lists no jobs, creates custom and hyperparameter tuning jobs and pipeline runs
(PipelineJobs: set `states` to PIPELINE_STATE_… names), answers each later GET
of a job with the next of `states` (the last one repeating), and cancels. `fail_with`
makes every request answer one Google-shaped error instead, `fail_create_with` only
the creations.

The Model Registry (`models`): uploads (a first one with `modelId` creates the model,
later ones name it as `parentModel`; the operation is done at once), GETs of a model or
of one version (`models/m@2`), listing versions, and merging version aliases, where
an alias another version holds is refused, as a version's aliases are unique.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from support import start_server

COLLECTIONS = {"customJobs", "hyperparameterTuningJobs", "pipelineJobs"}


@dataclass
class Request:
    method: str
    path: str  # without the query, percent-decoded
    query: str
    body: Any  # the parsed JSON body, or None
    raw: str  # the body as sent
    headers: dict[str, str]


@dataclass
class VertexStub:
    """The stub's state: what was asked, and how to answer."""

    url: str = ""
    requests: list[Request] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: list[str] = field(
        default_factory=lambda: ["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    )
    # Extra fields the final GET of a job carries (an error, the trials of a tuning job).
    final_fields: dict[str, Any] = field(default_factory=dict)
    fail_with: tuple[int, dict[str, Any]] | None = None
    # Only the POSTs that create a job or upload a model answer this error (the rest work).
    fail_create_with: tuple[int, dict[str, Any]] | None = None
    reads: dict[str, int] = field(default_factory=dict)
    # The Model Registry: model name → its versions (Model bodies), oldest first.
    models: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def created(self, collection: str) -> list[Request]:
        """The POSTs that created a job in `collection`."""
        return [
            r for r in self.requests if r.method == "POST" and r.path.endswith(f"/{collection}")
        ]

    def next_state(self, name: str) -> str:
        count = self.reads.get(name, 0)
        self.reads[name] = count + 1
        return self.states[min(count, len(self.states) - 1)]


def google_error(status: int, message: str, reason: str | None = None) -> dict[str, Any]:
    """An error body as Google's APIs send it, with an ErrorInfo `reason` when given."""
    names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": names.get(status, "NOT_FOUND" if status == 404 else "UNAVAILABLE"),
    }
    if reason:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "aiplatform.googleapis.com"},
            }
        ]
    return {"error": error}


def _create(stub: VertexStub, collection_path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Record a new job under `collection_path` (…/customJobs); the job as created."""
    assert collection_path.rsplit("/", 1)[-1] in COLLECTIONS, collection_path
    collection = collection_path.rsplit("/", 1)[-1]
    name = f"{collection_path}/{1000 + len(stub.jobs)}"
    queued = "PIPELINE_STATE_QUEUED" if collection == "pipelineJobs" else "JOB_STATE_QUEUED"
    job = {**body, "name": name, "state": queued}
    stub.jobs[name] = job
    return job


def _cancel(stub: VertexStub, name: str) -> dict[str, Any]:
    """Cancel job `name`: every later read of it says CANCELLED."""
    kind = "PIPELINE" if "/pipelineJobs/" in name else "JOB"
    stub.jobs[name]["state"] = f"{kind}_STATE_CANCELLED"
    stub.states = [f"{kind}_STATE_CANCELLED"]
    return {}


def _read(stub: VertexStub, name: str) -> tuple[int, dict[str, Any]]:
    """A GET of `name`: an empty listing of a collection, or the job in its next state."""
    if name.rsplit("/", 1)[-1] in COLLECTIONS:
        return 200, {}
    if name not in stub.jobs:
        return 404, google_error(404, f"{name} not found")
    state = stub.next_state(name)
    job = {**stub.jobs[name], "state": state}
    if state == stub.states[-1]:
        job.update(stub.final_fields)
    return 200, job


MODEL_TYPE = "type.googleapis.com/google.cloud.aiplatform.v1.UploadModelResponse"


def _upload(stub: VertexStub, parent: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """models:upload: a new model (`modelId`) or a new version of `parentModel`."""
    if "parentModel" in body:
        name = body["parentModel"]
        if name not in stub.models:
            return 404, google_error(404, f"{name} not found")
    else:
        name = f"{parent}/models/{body['modelId']}"
        if name in stub.models:
            return 409, google_error(409, f"{name} already exists")
        stub.models[name] = []
    versions = stub.models[name]
    version_id = str(len(versions) + 1)
    versions.append(
        {
            **body["model"],
            "name": name,
            "versionId": version_id,
            "versionAliases": [] if versions else ["default"],
            # The SDK's Model reads it on every GET.
            "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES"],
        }
    )
    operation = {
        "name": f"{parent}/operations/{len(stub.requests)}",
        "done": True,
        "response": {"@type": MODEL_TYPE, "model": name, "modelVersionId": version_id},
    }
    return 200, operation


def _model_version(stub: VertexStub, name: str) -> dict[str, Any] | None:
    """`models/m@2` (a version), `models/m@production` (the version holding the alias),
    or `models/m` (its `default` version); None if absent."""
    model, _, wanted = name.partition("@")
    wanted = wanted or "default"
    for version in stub.models.get(model, []):
        if wanted in (version["versionId"], *version["versionAliases"]):
            return version
    return None


def _merge_aliases(stub: VertexStub, name: str, aliases: list[str]) -> tuple[int, dict[str, Any]]:
    """`-alias` removes an alias from the version; an alias another version holds moves
    here (Vertex AI: "applying an alias used by another version removes it from that
    version")."""
    version = _model_version(stub, name)
    if version is None:
        return 404, google_error(404, f"{name} not found")
    siblings = stub.models[name.partition("@")[0]]
    for alias in aliases:
        if alias.startswith("-"):
            if alias[1:] in version["versionAliases"]:
                version["versionAliases"].remove(alias[1:])
            continue
        for other in siblings:
            if other is not version and alias in other["versionAliases"]:
                other["versionAliases"].remove(alias)
        if alias not in version["versionAliases"]:
            version["versionAliases"].append(alias)
    return 200, version


def _models_post(stub: VertexStub, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    if path.endswith("/models:upload"):
        return stub.fail_create_with or _upload(stub, path.removesuffix("/models:upload"), body)
    if path.endswith(":mergeVersionAliases"):
        return _merge_aliases(
            stub, path.removesuffix(":mergeVersionAliases"), body["versionAliases"]
        )
    return 404, google_error(404, f"no route {path}")


def _models_get(stub: VertexStub, path: str) -> tuple[int, dict[str, Any]]:
    if path.endswith(":listVersions"):
        model = path.removesuffix(":listVersions")
        if model not in stub.models:
            return 404, google_error(404, f"{model} not found")
        return 200, {"models": stub.models[model]}
    version = _model_version(stub, path)
    return (200, version) if version else (404, google_error(404, f"{path} not found"))


def _handler(stub: VertexStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Request:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            parts = urlsplit(self.path)
            request = Request(
                method=self.command,
                path=unquote(parts.path),
                query=unquote(parts.query),
                body=json.loads(raw) if raw else None,
                raw=raw,
                headers=dict(self.headers),
            )
            stub.requests.append(request)
            return request

        def do_POST(self) -> None:
            request = self._record()
            if stub.fail_with:
                self._send(*stub.fail_with)
                return
            path = request.path.removeprefix("/v1/")
            if "/models" in path:
                self._send(*_models_post(stub, path, request.body))
            elif path.endswith(":cancel"):
                self._send(200, _cancel(stub, path.removesuffix(":cancel")))
            elif stub.fail_create_with:
                self._send(*stub.fail_create_with)
            else:
                self._send(200, _create(stub, path, request.body))

        def do_GET(self) -> None:
            request = self._record()
            path = request.path.removeprefix("/v1/")
            if stub.fail_with:
                self._send(*stub.fail_with)
            elif "/models" in path:
                self._send(*_models_get(stub, path))
            else:
                self._send(*_read(stub, path))

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def vertex_stub() -> Iterator[VertexStub]:
    """A running stub; `stub.url` is its `http://127.0.0.1:PORT`."""
    stub = VertexStub()
    server, stub.url = start_server(_handler(stub))
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
