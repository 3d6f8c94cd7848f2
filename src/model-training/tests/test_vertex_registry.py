"""Issue 16: `trainer register` as the cloud pipeline's last step: gs:// inputs, and the
Vertex AI Model Registry (`--vertex-serving-image`) kept in step with the folder registry.

The CLI runs as the pipeline runs it, against the Cloud Storage emulator and the
loopback Vertex AI stub (tests/vertex_stub.py), which records every request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from service_stubs import QUICK_BUDGET, assert_one_line_service_error, service_fault
from vertex_stub import Request, VertexStub, google_error, vertex_stub

from common import storage

__all__ = ["service_fault", "vertex_stub"]  # fixtures, imported for pytest

IMAGE = "europe-docker.pkg.dev/proj/mega/api-service:abc123"
MODEL = "projects/proj/locations/europe-west4/models/digits-cnn"
PREPROCESS = {"image_size": 16, "color_mode": "grayscale", "resize": "stretch"}
LINEAGE = {"data_hash": "ab12" * 16, "params": {}}
# The image's build sets GIT_SHA; register records it in the version's lineage.
GIT_SHA = "0123456789abcdef" * 2 + "01234567"


def make_candidate(folder: Path, model: bytes = b"stand-in model") -> Path:
    """A candidate that passes the checks; its model file is never loaded by register."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocess.json").write_text(json.dumps(PREPROCESS))
    (folder / "labels.json").write_text(json.dumps(["a", "b"]))
    (folder / "lineage.json").write_text(json.dumps(LINEAGE))
    (folder / "model.tflite").write_bytes(model)
    return folder


def write_metrics(path: Path, accuracy: float, macro_f1: float = 0.95) -> str:
    path.write_text(json.dumps({"test": {"accuracy": accuracy, "macro_f1": macro_f1}}))
    return str(path)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    params = {"registry": {"model_name": "digits-cnn"}, "train": {"tracking": "none"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    make_candidate(tmp_path / "candidate")
    return tmp_path


def register(
    root: Path, *args: str, stub: VertexStub | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m trainer register ARGS` in `root` as the pipeline runs it (on the stub)."""
    cloud = {
        "MEGA_GCP_PROJECT": "proj",
        "MEGA_GCP_REGION": "europe-west4",
        "MEGA_WANDB_MODE": "disabled",
        **({"MEGA_VERTEX_ENDPOINT": stub.url} if stub else {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "trainer", "register", *args],
        cwd=root,
        env={**os.environ, **QUICK_BUDGET, **cloud, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def on_vertex(root: Path, model: str, metrics: str, registry: str) -> list[str]:
    return [
        "--model",
        model,
        "--metrics",
        metrics,
        "--registry",
        registry,
        "--vertex-serving-image",
        IMAGE,
    ]


def model_requests(stub: VertexStub) -> list[Request]:
    return [r for r in stub.requests if "/models" in r.path]


def merges(stub: VertexStub) -> list[tuple[str, list[str]]]:
    """(version, aliases) of each mergeVersionAliases, in order."""
    return [
        (
            r.path.removeprefix(f"/v1/{MODEL}@").removesuffix(":mergeVersionAliases"),
            r.body["versionAliases"],
        )
        for r in stub.requests
        if r.path.endswith(":mergeVersionAliases")
    ]


def uploads(stub: VertexStub) -> list[dict[str, Any]]:
    return [r.body for r in stub.requests if r.path.endswith("/models:upload")]


def aliases_on_vertex(stub: VertexStub) -> dict[str, list[str]]:
    return {v["versionId"]: sorted(v["versionAliases"]) for v in stub.models[MODEL]}


def test_gs_inputs_are_downloaded_and_published(project: Path, storage_emulator: str) -> None:
    """The pipeline passes gs:// URIs for the candidate, metrics and registry; with
    tracking on, the gs:// version reaches W&B as the model artifact."""
    params = {"registry": {"model_name": "digits-cnn"}, "train": {"tracking": "wandb"}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    storage.upload_tree(project / "candidate", f"{storage_emulator}/run/candidate")
    storage.write_bytes(
        f"{storage_emulator}/run/metrics.json",
        json.dumps({"test": {"accuracy": 0.95, "macro_f1": 0.95}}).encode(),
    )
    result = register(
        project,
        "--model",
        f"{storage_emulator}/run/candidate",
        "--metrics",
        f"{storage_emulator}/run/metrics.json",
        "--registry",
        f"{storage_emulator}/models",
        MEGA_WANDB_MODE="offline",
        MEGA_WANDB_DIR="runs",
    )
    assert result.returncode == 0, result.stderr
    assert "digits-cnn version 1 promoted to production" in result.stdout
    ((_, aliases, files),) = logged_models(project / "runs")
    assert {"production", "1"} <= set(aliases) and "model.tflite" in files
    version = f"{storage_emulator}/models/digits-cnn/1"
    assert storage.read_bytes(f"{version}/model.tflite") == b"stand-in model"
    assert json.loads(storage.read_bytes(f"{version}/lineage.json"))["data_hash"] == "ab12" * 16


@pytest.mark.parametrize("option", ["--model", "--optimized"])
def test_an_empty_gs_folder_is_named_by_its_uri(
    project: Path, storage_emulator: str, option: str
) -> None:
    """Not by the temporary folder it was downloaded to, which the user never saw."""
    args = {"--model": "candidate", "--metrics": write_metrics(project / "m.json", 0.95)}
    args[option] = f"{storage_emulator}/nothing/here"
    result = register(project, *[x for pair in args.items() for x in pair])
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"{storage_emulator}/nothing/here" in line and "/tmp" not in line, line


@pytest.mark.parametrize("broken", ["empty", "no labels"])
def test_evaluate_and_optimize_name_a_broken_gs_candidate_by_its_uri(
    tmp_path: Path, storage_emulator: str, broken: str
) -> None:
    """The same download helper serves evaluate and optimize (`local_candidate`)."""
    from trainer.__main__ import CANDIDATE_MODEL_FILES, local_candidate
    from trainer.inputs import InputError

    uri = f"{storage_emulator}/run/candidate"
    if broken == "no labels":
        folder = make_candidate(tmp_path / "c")
        (folder / "labels.json").unlink()
        storage.upload_tree(folder, uri)
    with pytest.raises(InputError) as caught:
        local_candidate(uri, str(tmp_path / "download"), CANDIDATE_MODEL_FILES)
    assert uri in str(caught.value) and str(tmp_path) not in str(caught.value)


def test_first_upload_creates_the_model_with_honest_metadata(
    project: Path, storage_emulator: str, vertex_stub: VertexStub
) -> None:
    registry = f"{storage_emulator}/models"
    metrics = write_metrics(project / "metrics.json", 0.9813, 0.9755)
    args = on_vertex(project, "candidate", metrics, registry)
    result = register(project, *args, stub=vertex_stub, GIT_SHA=GIT_SHA)
    assert result.returncode == 0, result.stderr
    assert f"uploaded as {MODEL} version 1 (production)" in result.stdout

    (upload,) = [r for r in vertex_stub.requests if r.path.endswith("/models:upload")]
    assert upload.path == "/v1/projects/proj/locations/europe-west4/models:upload"
    assert upload.body["modelId"] == "digits-cnn" and "parentModel" not in upload.body
    model = upload.body["model"]
    version = f"{registry}/digits-cnn/1"
    assert model["artifactUri"] == f"{version}/"
    assert model["displayName"] == "digits-cnn"
    assert "version 1" in model["description"]
    spec = model["containerSpec"]
    assert spec["imageUri"] == IMAGE
    assert spec["ports"] == [{"containerPort": 8000}]
    assert (spec["predictRoute"], spec["healthRoute"]) == ("/v1/predict", "/readyz")
    env = {e["name"]: e["value"] for e in spec["env"]}
    assert env == {
        "MEGA_MODELS_ROOT": registry,
        "MEGA_MODEL_NAME": "digits-cnn",
        "MEGA_MODEL_ALIAS": "1",
        "MEGA_SERVE_PORT": "8000",
    }
    content_hash = json.loads(storage.read_bytes(f"{version}/version.json"))["content_hash"]
    assert model["labels"] == {
        "mega-version": "1",
        "content-hash": content_hash[:40],
        "data-version": "ab12ab12ab12",
        "git-sha": GIT_SHA,
        "test-accuracy": "0-9813",
        "macro-f1": "0-9755",
    }
    assert merges(vertex_stub) == [("1", ["production"])]
    assert aliases_on_vertex(vertex_stub) == {"1": ["default", "production"]}


def test_aliases_follow_the_gate_and_a_rerun_uploads_nothing(
    project: Path, storage_emulator: str, vertex_stub: VertexStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = f"{storage_emulator}/models"

    def run(model: bytes, accuracy: float) -> subprocess.CompletedProcess[str]:
        make_candidate(project / "candidate", model)
        metrics = write_metrics(project / "metrics.json", accuracy)
        args = on_vertex(project, "candidate", metrics, registry)
        result = register(project, *args, stub=vertex_stub)
        assert result.returncode == 0, result.stderr
        return result

    run(b"first", 0.95)  # production
    second = run(b"second", 0.951)  # does not beat it: candidate
    assert "kept as candidate" in second.stdout
    (_, later) = uploads(vertex_stub)
    assert later["parentModel"] == MODEL and "modelId" not in later
    assert aliases_on_vertex(vertex_stub) == {"1": ["default", "production"], "2": ["candidate"]}

    vertex_stub.requests.clear()
    run(b"third", 0.99)  # promoted: production moves from 1 to 3, candidate stays on 2
    # One request moves each alias (Vertex AI takes it off its holder), so @production
    # never names nothing; `default`, what the model's bare name serves, goes with it.
    assert merges(vertex_stub) == [("3", ["production", "default"])]
    assert aliases_on_vertex(vertex_stub) == {
        "1": [],
        "2": ["candidate"],
        "3": ["default", "production"],
    }
    local = json.loads(storage.read_bytes(f"{registry}/digits-cnn/aliases.json"))
    assert local == {"production": "3", "candidate": "2"}

    assert sdk_versions(vertex_stub, monkeypatch, "production", "candidate") == ["3", "2"]

    vertex_stub.requests.clear()
    again = run(b"third", 0.99)
    assert f"version 3 already is {MODEL} version 3 (production)" in again.stdout
    assert not uploads(vertex_stub) and not merges(vertex_stub)
    assert len(vertex_stub.models[MODEL]) == 3


def sdk_versions(stub: VertexStub, monkeypatch: pytest.MonkeyPatch, *aliases: str) -> list[str]:
    """The version IDs `aliases` name, as a user of the Vertex AI SDK reads them (the
    SDK's process-wide settings are restored after the test)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform
    from google.cloud.aiplatform import initializer

    monkeypatch.setattr(initializer, "global_config", initializer._Config())
    initializer.global_config.init(  # aiplatform.init is bound to the original
        project="proj",
        location="europe-west4",
        api_endpoint=stub.url,
        api_transport="rest",
        credentials=AnonymousCredentials(),
    )
    return [str(aiplatform.Model(f"{MODEL}@{alias}").version_id) for alias in aliases]


def test_a_rerun_repairs_aliases_moved_by_hand(
    project: Path, storage_emulator: str, vertex_stub: VertexStub
) -> None:
    """The folder registry decides: an alias moved in the console is moved back."""
    registry = f"{storage_emulator}/models"
    metrics = write_metrics(project / "metrics.json", 0.95)
    args = on_vertex(project, "candidate", metrics, registry)
    assert register(project, *args, stub=vertex_stub).returncode == 0
    vertex_stub.models[MODEL][0]["versionAliases"] = ["default"]  # production removed
    result = register(project, *args, stub=vertex_stub)
    assert result.returncode == 0, result.stderr
    assert len(uploads(vertex_stub)) == 1
    assert aliases_on_vertex(vertex_stub) == {"1": ["default", "production"]}


@pytest.mark.parametrize(
    ("settings", "registry", "expected"),
    [
        ({"MEGA_GCP_PROJECT": ""}, "gs", "needs MEGA_GCP_PROJECT"),
        ({}, "local", "reads model versions from Cloud Storage"),
    ],
    ids=["no project", "local registry"],
)
def test_vertex_needs_a_project_and_a_gs_registry(
    project: Path, settings: dict[str, str], registry: str, expected: str
) -> None:
    """Refused before anything is published (exit 2), with the fix."""
    root = "gs://nowhere/models" if registry == "gs" else "models"
    metrics = write_metrics(project / "metrics.json", 0.95)
    result = register(project, *on_vertex(project, "candidate", metrics, root), **settings)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("register: error: --") and expected in line, line
    assert not (project / "models").exists()


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        (403, None, "permission denied in project proj"),
        (
            403,
            "SERVICE_DISABLED",
            "gcloud services enable aiplatform.googleapis.com --project proj",
        ),
        (400, None, "the Model Registry refused the request: POST"),
    ],
    ids=["permission", "api disabled", "bad request"],
)
def test_a_refusal_is_one_line_and_the_version_stays_published(
    project: Path,
    storage_emulator: str,
    vertex_stub: VertexStub,
    status: int,
    reason: str | None,
    expected: str,
) -> None:
    error = (status, google_error(status, "stub refuses", reason))
    if status == 400:  # the upload itself: a bad image name, say
        vertex_stub.fail_create_with = error
    else:
        vertex_stub.fail_with = error
    registry = f"{storage_emulator}/models"
    metrics = write_metrics(project / "metrics.json", 0.95)
    args = on_vertex(project, "candidate", metrics, registry)
    result = register(project, *args, stub=vertex_stub)
    line = assert_one_line_service_error(result, "register", f"Vertex AI ({vertex_stub.url})")
    assert expected in line, line
    if reason is None and status == 403:
        assert "roles/aiplatform.user" in line
    if status == 400:
        assert "models:upload" in line and "check --vertex-serving-image" in line
    assert "version 1 is published, re-run register" in line
    assert storage.exists(f"{registry}/digits-cnn/1/version.json")


@pytest.mark.parametrize("service_fault", ["refused", "hang", "401"], indirect=True)
def test_an_unreachable_or_refusing_vertex_is_one_line(
    project: Path, storage_emulator: str, service_fault: str, request: pytest.FixtureRequest
) -> None:
    registry = f"{storage_emulator}/models"
    metrics = write_metrics(project / "metrics.json", 0.95)
    result = register(
        project,
        *on_vertex(project, "candidate", metrics, registry),
        MEGA_VERTEX_ENDPOINT=service_fault,
    )
    line = assert_one_line_service_error(result, "register", f"Vertex AI ({service_fault})")
    assert "version 1 is published, re-run register" in line
    assert storage.exists(f"{registry}/digits-cnn/1/version.json")
    expected = {
        "refused": "unreachable (connection refused); check the network or MEGA_VERTEX_ENDPOINT",
        "hang": "unreachable (no answer in time)",
        "401": "the credentials were refused",
    }
    assert expected[request.node.callspec.params["service_fault"]] in line, line


# wandb's run file: a 7-byte header, then LevelDB log records (checksum, length, type)
# in 32 KiB blocks, each a protobuf `Record`; FULL (1) or FIRST..LAST (2, 3, 4) pieces.
WANDB_BLOCK = 32 * 1024


def wandb_records(path: Path) -> list[Any]:
    """The Records of an offline run's `.wandb` file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb run file"
    found, pos, chunk = [], 7, b""
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            found.append(record)
            chunk = b""
    return found


def logged_models(runs: Path) -> list[tuple[str, list[str], set[str]]]:
    """(name, aliases, files) of every `model` artifact the offline runs under `runs` logged."""
    models = []
    for run_file in sorted(runs.rglob("*.wandb")):
        for record in wandb_records(run_file):
            if record.WhichOneof("record_type") == "artifact" and record.artifact.type == "model":
                files = {entry.path for entry in record.artifact.manifest.contents}
                models.append((record.artifact.name, list(record.artifact.aliases), files))
    return models


def test_the_wandb_model_artifact_gets_the_registry_aliases(tmp_path: Path) -> None:
    """With tracking on, each registered version is the W&B `model` artifact of the
    registry's model name, aliased with the gate's alias and the version."""
    params = {"registry": {"model_name": "digits-cnn"}, "train": {"tracking": "wandb"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    wandb_env = {"MEGA_WANDB_MODE": "offline", "MEGA_WANDB_DIR": "runs"}
    for model, accuracy in ((b"first", 0.95), (b"second", 0.951)):
        make_candidate(tmp_path / "candidate", model)
        metrics = write_metrics(tmp_path / "metrics.json", accuracy)
        args = ["--model", "candidate", "--metrics", metrics, "--registry", "models"]
        result = register(tmp_path, *args, **wandb_env)
        assert result.returncode == 0, result.stderr
    (first, second) = logged_models(tmp_path / "runs")
    assert first[0] == second[0] == "digits-cnn"
    assert {"production", "1"} <= set(first[1]) and {"candidate", "2"} <= set(second[1])
    assert {"model.tflite", "version.json", "lineage.json", "metrics.json"} <= first[2]


def test_label_values_are_what_vertex_takes() -> None:
    from common.services import label_value

    assert label_value("0.9813") == "0-9813"
    assert label_value("Feature/X y") == "feature-x-y"
    assert len(label_value("a" * 100)) == 63
