"""The compiled kfp pipeline, run here by kfp's local orchestrator on the tiny digits.

Each step runs its container's CLI as a process (tests/kfp_local.py), with the command,
artifacts, output parameters and `dsl.If` gate of the pipeline Vertex AI Pipelines gets;
the register step uploads to the loopback Vertex AI stub. What differs from Vertex AI:
no images, and local folders where Vertex AI gives gs:// URIs (the CLIs take both).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from kfp_local import ARTIFACT, compiled_steps, local_kfp
from support import REPO, write_params
from vertex_stub import VertexStub, vertex_stub

from common.settings import Settings
from workflow.pipeline import PipelinePlan, build_pipeline
from workflow.pipeline_submit import compiled_spec, plan_pipeline, stage_params
from workflow.project import Project
from workflow.vertex import CloudTarget

__all__ = ["vertex_stub"]  # a fixture, imported for pytest

OUTPUT_PARAMETER = re.compile(r"\{\{\$\.outputs\.parameters\['([^']+)'\]\.output_file\}\}")
PARAMETER = "{{{{$.inputs.parameters['{}']}}}}"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    # kfp.local says the training step's machine settings do nothing here: known.
    pytest.mark.filterwarnings("ignore:Task 'train'.*no effect:UserWarning"),
]

SETTINGS = {
    "gcp_project": "my-project",
    "gcp_region": "europe-west4",
    "gcs_root": "gs://test-bucket/mega",
    "image_repository": "images.test/my-project/mega",
}


def local_plan(root: Path, settings: Settings, models_root: str | None = None) -> PipelinePlan:
    """The pipeline `mega run --on vertex` would submit, its params staged in a local
    folder and its registry local too unless `models_root` is given."""
    project = Project(root=root, settings=settings)
    plan = plan_pipeline(project, settings, CloudTarget.from_settings(settings), "test")
    plan = replace(
        plan,
        params_root=str(root / "staged-params"),
        models_root=models_root or str(root / "registry"),
    )
    stage_params(project, plan)
    return plan


def make_project(root: Path, **params: dict) -> Path:
    root.mkdir(exist_ok=True)
    for name in ("dvc.yaml", "docker-compose.yml"):
        shutil.copy(REPO / name, root / name)
    write_params(root, {"train": {"epochs": 3}, **params})
    return root


def run(plan: PipelinePlan, root: Path, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Run the pipeline to its end: None when it succeeded, else kfp's failure message.

    The steps run in an empty folder, as in their images: nothing of the project
    (params.yaml, dvc.yaml, data/) is there to lean on."""
    empty = root / "work"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with local_kfp(monkeypatch, root / "runs"):
        try:
            build_pipeline(plan)()
        except RuntimeError as exc:
            return str(exc)
    return None


def ran(root: Path, step: str) -> bool:
    """Whether `step` ran (kfp.local gives every step that runs its own folder)."""
    return any(path.name == step for path in (root / "runs").glob("*/*"))


def test_each_step_works_on_gs_uris_in_an_empty_folder(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    vertex_stub: VertexStub,
    storage_emulator: str,
) -> None:
    """As on Vertex AI: every artifact a gs:// URI (here in the storage emulator; the
    shards TensorFlow reads excepted), every step in an empty working folder. Each
    compiled command, run in the DAG's order with the placeholders filled as Vertex AI
    fills them, does its work."""
    from common import storage

    root = make_project(tmp_path / "project")
    settings = Settings(**SETTINGS)
    project = Project(root=root, settings=settings)
    plan = plan_pipeline(project, settings, CloudTarget.from_settings(settings), "test")
    bucket = storage_emulator
    plan = replace(plan, params_root=f"{bucket}/params", models_root=f"{bucket}/models")
    stage_params(project, plan)
    steps = compiled_steps(compiled_spec(plan))
    outputs = tmp_path / "outputs"
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        **plan.env,
        "MEGA_VERTEX_ENDPOINT": vertex_stub.url,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }

    def fill(step: str, sources: dict[str, tuple[str, str]], word: str) -> str:
        def artifact(found: re.Match[str]) -> str:
            producer, key = (step, found[2]) if found[1] == "outputs" else sources[found[2]]
            if key == "processed":
                # TensorFlow reads the shards through its own Cloud Storage client, which
                # knows no emulator: here alone a local folder (on Vertex AI, gs:// too).
                return str(tmp_path / "processed")
            return f"{bucket}/run/{producer}/{key}"

        word = ARTIFACT.sub(artifact, word)
        word = OUTPUT_PARAMETER.sub(lambda m: str(outputs / step / m[1]), word)
        return word.replace(PARAMETER.format("params_root"), plan.params_root).replace(
            PARAMETER.format("models_root"), plan.models_root
        )

    for step in ("collect", "process", "train", "evaluate", "optimize", "register"):
        command, sources = steps[step]
        args = [fill(step, sources, word) for word in command]
        assert not any("{{" in arg for arg in args), args
        result = subprocess.run(
            args, cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{step}: {result.stdout}\n{result.stderr}"
    # Everything went to the bucket (train leaves only its emptied backup folder).
    assert [path for path in work.rglob("*") if path.is_file()] == []
    assert storage.exists(f"{bucket}/run/process/data_card/data_card.md")
    assert float((outputs / "evaluate/accuracy").read_text()) > 0.5
    aliases = json.loads(storage.read_text(f"{bucket}/models/digits-cnn/aliases.json"))
    assert "production" in aliases
    assert [r for r in vertex_stub.requests if r.path.endswith("/models:upload")]


def test_every_step_runs_and_register_publishes_to_both_registries(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    vertex_stub: VertexStub,
    storage_emulator: str,
) -> None:
    """The folder registry on (emulated) Cloud Storage and the Vertex AI Model Registry
    (the stub) get the same version, `production` on both."""
    from common import storage

    root = make_project(tmp_path)
    monkeypatch.setenv("MEGA_VERTEX_ENDPOINT", vertex_stub.url)  # the steps inherit it
    models = f"{storage_emulator}/mega/models"
    failure = run(local_plan(root, Settings(**SETTINGS), models), root, monkeypatch)
    assert failure is None, failure
    assert all(ran(root, step) for step in ("collect", "process", "train", "evaluate"))
    assert ran(root, "optimize")
    aliases = json.loads(storage.read_text(f"{models}/digits-cnn/aliases.json"))
    version = aliases["production"]
    (upload,) = [r for r in vertex_stub.requests if r.path.endswith("/models:upload")]
    assert upload.path == "/v1/projects/my-project/locations/europe-west4/models:upload"
    model = upload.body["model"]
    assert model["artifactUri"].rstrip("/") == f"{models}/digits-cnn/{version}"
    assert model["labels"]["mega-version"] == str(version)
    # The stub's model now holds that one version, aliased as the folder registry is.
    (held,) = vertex_stub.models["projects/my-project/locations/europe-west4/models/digits-cnn"]
    assert "production" in held["versionAliases"]


def test_a_candidate_below_the_floor_is_neither_optimized_nor_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path, registry={"min_accuracy": 1.0})
    failure = run(local_plan(root, Settings(**SETTINGS)), root, monkeypatch)
    assert failure is None, failure  # a closed gate is not a failure
    assert ran(root, "evaluate")
    assert not ran(root, "optimize")
    assert not (root / "registry").exists()


def test_a_failing_step_stops_the_pipeline_before_register(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """optimize fails (its params file is broken): register never runs."""
    root = make_project(tmp_path)
    plan = local_plan(root, Settings(**SETTINGS))
    broken = Path(plan.params_root) / f"optimize-{plan.digests['optimize']}.yaml"
    broken.write_text("optimize: {max_accuracy_drop: not-a-number}\n")
    failure = run(plan, root, monkeypatch)
    assert failure is not None and "optimize" in failure
    assert ran(root, "evaluate")
    assert not (root / "registry").exists()
