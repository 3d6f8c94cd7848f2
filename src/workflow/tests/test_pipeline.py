"""The kfp pipeline: compiled for real and its DAG asserted; submitted to the Vertex AI stub.

`mega pipeline compile` writes kfp's IR; the tests read it as Vertex AI Pipelines does:
the tasks, their dependencies, images, arguments, machine and GPU settings, the gate's
conditions and caching. `mega run --on vertex` sends a PipelineJob, asserted field by
field as the REST API receives it, with params.yaml staged in the storage emulator.
(tests/test_stage_commands.py checks the steps' commands against dvc.yaml;
tests/e2e/test_kfp_pipeline.py runs the pipeline with kfp's local orchestrator.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from mega_cli import REPOSITORY, SECRET, SETTINGS, Mega, mega, on_stub, run_mega
from service_stubs import assert_one_line_service_error
from support import GIT_IDENTITY, REPO, write_params
from vertex_stub import VertexStub, google_error, vertex_stub

__all__ = ["run_mega", "vertex_stub"]  # fixtures, imported for pytest

STAGES = ["collect", "process", "train", "evaluate", "optimize", "register"]
PARAMS = "gs://test-bucket/mega/pipeline/params"
SUCCEEDED = ["PIPELINE_STATE_PENDING", "PIPELINE_STATE_RUNNING", "PIPELINE_STATE_SUCCEEDED"]


def make_project(root: Path, **params: Any) -> Path:
    """A project: dvc.yaml, docker-compose.yml and params.yaml (with `params`)."""
    for name in ("dvc.yaml", "docker-compose.yml"):
        shutil.copy(REPO / name, root / name)
    write_params(root, params)
    return root


def compile_yaml(run_mega: Mega, root: Path, env: dict[str, str] | None = None) -> dict:
    out = root / "out/pipeline.yaml"
    args = ["pipeline", "compile", "--out", str(out), "--image-tag", "abc123"]
    result = run_mega(args, root, env if env is not None else SETTINGS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"compiled: {out}" in result.stdout
    return yaml.safe_load(out.read_text())


def executor(spec: dict, task: str) -> dict:
    return spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]


def gate(spec: dict) -> tuple[dict, dict]:
    """The two conditions: the outer task (in the root DAG) and the inner one."""
    outer = spec["root"]["dag"]["tasks"]["condition-1"]
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]["condition-2"]
    return outer, inner


# --- compiling ---------------------------------------------------------------------------


def test_compile_on_a_fresh_clone_names_the_unset_settings(tmp_path: Path) -> None:
    """As a newcomer runs it: a real `mega` process, no settings, a git checkout."""
    root = make_project(tmp_path)
    env = {**os.environ, **GIT_IDENTITY}
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "project"]):
        subprocess.run(["git", *args], cwd=root, env=env, check=True)
    result = mega(["pipeline", "compile"], root, {})
    assert result.returncode == 0, result.stderr
    spec = yaml.safe_load((root / ".mega/pipeline.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == "mega-pipeline"
    sha = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    assert executor(spec, "collect")["image"] == f"<MEGA_IMAGE_REPOSITORY>/data-collector:{sha}"
    assert "MEGA_GCP_PROJECT, MEGA_GCS_ROOT, MEGA_IMAGE_REPOSITORY unset" in result.stderr


def test_the_dag_runs_the_stages_in_order_behind_the_gate(run_mega: Mega, tmp_path: Path) -> None:
    spec = compile_yaml(run_mega, make_project(tmp_path))
    root = spec["root"]["dag"]["tasks"]
    assert sorted(root) == ["collect", "condition-1", "evaluate", "process", "train"]
    assert "dependentTasks" not in root["collect"]
    assert root["process"]["dependentTasks"] == ["collect"]
    assert root["train"]["dependentTasks"] == ["process"]
    assert sorted(root["evaluate"]["dependentTasks"]) == ["process", "train"]
    assert sorted(root["condition-1"]["dependentTasks"]) == ["evaluate", "process", "train"]
    inner = spec["components"]["comp-condition-2"]["dag"]["tasks"]
    assert sorted(inner) == ["optimize", "register"]
    assert inner["register"]["dependentTasks"] == ["optimize"]
    # register reads evaluate's metrics and optimize's variants, and the candidate.
    artifacts = inner["register"]["inputs"]["artifacts"]
    assert artifacts["optimized"]["taskOutputArtifact"] == {
        "producerTask": "optimize",
        "outputArtifactKey": "optimized",
    }
    assert artifacts["metrics"] == {"componentInputArtifact": "pipelinechannel--evaluate-metrics"}


def test_the_gate_is_accuracy_then_macro_f1_at_params_yaml_floors(
    run_mega: Mega, tmp_path: Path
) -> None:
    root = make_project(tmp_path, registry={"min_accuracy": 0.93, "min_macro_f1": 0.91})
    spec = compile_yaml(run_mega, root)
    outer, inner = gate(spec)
    # The floors are compiled in: register reads the same params.yaml, so a run-time
    # parameter could only make the two disagree.
    assert outer["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--evaluate-accuracy'] >= 0.93"
    )
    assert inner["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--evaluate-macro_f1'] >= 0.91"
    )
    assert outer["taskInfo"]["name"] == "accuracy-floor"
    assert inner["taskInfo"]["name"] == "macro-f1-floor"
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert sorted(parameters) == ["models_root", "params_root"]
    assert parameters["models_root"]["defaultValue"] == "gs://test-bucket/mega/models"
    assert parameters["params_root"]["defaultValue"] == "gs://test-bucket/mega/pipeline/params"
    # evaluate hands the gate its two numbers as output parameters.
    args = executor(spec, "evaluate")["args"]
    for flag, name in (("--accuracy-file", "accuracy"), ("--macro-f1-file", "macro_f1")):
        assert args[args.index(flag) + 1] == f"{{{{$.outputs.parameters['{name}'].output_file}}}}"


def test_images_environment_and_caching(run_mega: Mega, tmp_path: Path) -> None:
    spec = compile_yaml(run_mega, make_project(tmp_path))
    containers = {
        "collect": "data-collector",
        "process": "data-processor",
        **dict.fromkeys(["train", "evaluate", "optimize", "register"], "model-training"),
    }
    for stage, container in containers.items():
        step = executor(spec, stage)
        assert step["image"] == f"{REPOSITORY}/{container}:abc123", stage
        assert {e["name"]: e["value"] for e in step["env"]} == {
            "MEGA_GCP_PROJECT": "my-project",
            "MEGA_GCP_REGION": "europe-west4",
            "MEGA_WANDB_MODE": "online",
            "MEGA_WANDB_PROJECT": "mega-pipeline",
            "MEGA_WANDB_SECRET": "wandb-api-key",
        }
    register = executor(spec, "register")["args"]
    assert register[register.index("--vertex-serving-image") + 1] == (
        f"{REPOSITORY}/api-service:abc123"
    )
    tasks = {
        **spec["root"]["dag"]["tasks"],
        **spec["components"]["comp-condition-2"]["dag"]["tasks"],
    }
    for stage in STAGES[:-1]:
        assert tasks[stage]["cachingOptions"] == {"enableCache": True}, stage
    # register publishes: never a cached result (a registry deleted since is filled again).
    assert tasks["register"]["cachingOptions"] == {}
    assert SECRET not in json.dumps(spec)


def test_each_step_reads_params_keyed_by_the_params_it_declares(
    run_mega: Mega, tmp_path: Path
) -> None:
    """A change to train.epochs changes the params file of train and optimize (which
    declares train), not collect's: their cache keys follow DVC's params."""

    def params_args(spec: dict) -> dict[str, str]:
        found = {}
        for stage in STAGES:
            args = executor(spec, stage)["args"]
            if "--params" in args:
                found[stage] = args[args.index("--params") + 1]
        return found

    before = params_args(compile_yaml(run_mega, make_project(tmp_path)))
    assert sorted(before) == ["collect", "optimize", "process", "register", "train"]
    prefix = "{{$.inputs.parameters['params_root']}}/"
    assert all(uri.startswith(prefix + stage + "-") for stage, uri in before.items())
    write_params(tmp_path, {"train": {"epochs": 3}})
    after = params_args(compile_yaml(run_mega, tmp_path))
    changed = sorted(stage for stage in before if before[stage] != after[stage])
    assert changed == ["optimize", "train"]


def test_gpus_and_machine_of_params_yaml_go_to_the_training_step(
    run_mega: Mega, tmp_path: Path
) -> None:
    root = make_project(
        tmp_path,
        vertex={"machine_type": "n1-highmem-8", "accelerator_count": 2},
    )
    spec = compile_yaml(run_mega, root)
    train = executor(spec, "train")
    assert train["image"] == f"{REPOSITORY}/model-training:abc123-gpu"
    assert train["resources"]["accelerator"]["resourceType"] == "NVIDIA_TESLA_T4"
    assert train["resources"]["accelerator"]["resourceCount"] == "2"
    assert train["resources"]["resourceCpuLimit"] == "8"
    assert train["resources"]["resourceMemoryLimit"] == "52000M"
    assert "resources" not in executor(spec, "evaluate")


@pytest.mark.parametrize(
    ("machine", "cpus", "memory"),
    [
        ("n1-standard-2", "2", "7500M"),
        ("n1-highcpu-4", "4", "3600M"),
        ("e2-standard-32", "32", "128000M"),
    ],
)
def test_machine_types_become_whole_limits(
    run_mega: Mega, tmp_path: Path, machine: str, cpus: str, memory: str
) -> None:
    """kfp takes whole numbers only: 7.5 GB is 7500M (it refused `7.5G` with a traceback)."""
    spec = compile_yaml(run_mega, make_project(tmp_path, vertex={"machine_type": machine}))
    resources = executor(spec, "train")["resources"]
    assert (resources["resourceCpuLimit"], resources["resourceMemoryLimit"]) == (cpus, memory)


@pytest.mark.parametrize(
    ("vertex", "message"),
    [
        ({"workers": 2}, "vertex.workers is 2"),
        ({"machine_type": "a2-highgpu-1g"}, "vertex.machine_type 'a2-highgpu-1g'"),
        ({"machine_type": "n1-standard-3"}, "no machine has 3 vCPUs"),
        ({"machine_type": "e2-standard-0"}, "no machine has 0 vCPUs"),
        ({"accelerator_count": 1, "accelerator_type": "TESLA_T4"}, "NVIDIA_TESLA_T4"),
    ],
)
def test_what_a_pipeline_step_cannot_be_is_a_usage_error(
    run_mega: Mega, tmp_path: Path, vertex: dict, message: str
) -> None:
    root = make_project(tmp_path, vertex=vertex)
    for args in (["pipeline", "compile"], ["run", "--on", "vertex", "--dry-run"]):
        result = run_mega([*args, "--image-tag", "t"], root, SETTINGS)
        assert result.returncode == 2, result.stdout + result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert message in line and line.startswith("mega: error: ")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--image-tag", "bad tag"], SETTINGS, "--image-tag 'bad tag' is not an image tag"),
        (
            ["--image-tag", "t"],
            {**SETTINGS, "MEGA_IMAGE_REPOSITORY": "r"},
            "MEGA_IMAGE_REPOSITORY=r is not a repository URI",
        ),
    ],
)
@pytest.mark.parametrize(
    "command", [["run", "--on", "vertex"], ["train", "--on", "vertex", "--data", "gs://b/data"]]
)
def test_a_bad_image_tag_or_repository_is_refused_before_any_request(
    run_mega: Mega,
    tmp_path: Path,
    command: list[str],
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    """Both cloud commands, dry or not: `mega build --push` refuses them too."""
    root = make_project(tmp_path)
    for dry in ([], ["--dry-run"]):
        result = run_mega([*command, *dry, *args], root, env)
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in result.stderr


def test_a_path_of_dvc_yaml_the_pipeline_does_not_carry_is_named(
    run_mega: Mega, tmp_path: Path
) -> None:
    root = make_project(tmp_path)
    dvc = (root / "dvc.yaml").read_text()
    dvc = dvc.replace(
        "--out models/candidate\n", "--out models/candidate --log-dir reports/logs\n"
    ).replace(
        "    outs:\n      - models/candidate\n",
        "    outs:\n      - models/candidate\n      - reports/logs\n",
    )
    (root / "dvc.yaml").write_text(dvc)
    result = run_mega(["pipeline", "compile", "--image-tag", "t"], root, SETTINGS)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "stage train: --log-dir reports/logs is a path the pipeline does not carry" in (
        result.stderr
    )


# --- mega run --on vertex -------------------------------------------------------------------


def test_dry_run_prints_the_pipeline_job(run_mega: Mega, tmp_path: Path) -> None:
    root = make_project(tmp_path)
    result = run_mega(
        ["run", "--on", "vertex", "--dry-run", "--image-tag", "abc123"], root, SETTINGS
    )
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["displayName"].startswith("mega-pipeline-digits-")
    assert job["runtimeConfig"] == {"gcsOutputDirectory": "gs://test-bucket/mega/pipeline-root"}
    assert job["serviceAccount"] == SETTINGS["MEGA_VERTEX_SERVICE_ACCOUNT"]
    assert job["pipelineSpec"]["pipelineInfo"]["name"] == "mega-pipeline"
    assert "nothing was sent" in result.stderr
    assert "W&B is off" not in result.stderr  # SETTINGS name a secret for the key
    no_secret = {k: v for k, v in SETTINGS.items() if k != "MEGA_WANDB_SECRET"}
    result = run_mega(
        ["run", "--on", "vertex", "--dry-run", "--image-tag", "a-dirty"], root, no_secret
    )
    assert "W&B is off in the cloud: set MEGA_WANDB_SECRET" in result.stderr
    assert "--allow-dirty" in result.stderr


def all_tasks(spec: dict) -> dict:
    """Every step's task, in the root DAG or behind the gate (not the gate's own)."""
    tasks = {
        **spec["root"]["dag"]["tasks"],
        **spec["components"]["comp-condition-2"]["dag"]["tasks"],
    }
    return {name: task for name, task in tasks.items() if name in STAGES}


@pytest.mark.parametrize(
    ("args", "note"),
    [
        (["--force", "--image-tag", "t"], None),
        (["--image-tag", "abc-dirty"], "the cache is off: a -dirty tag"),
    ],
)
def test_force_or_a_dirty_tag_turns_the_cache_off(
    run_mega: Mega, tmp_path: Path, args: list[str], note: str | None
) -> None:
    """A -dirty tag names whatever was pushed last under it: a cached step could hold
    another version of the code's results."""
    root = make_project(tmp_path)
    result = run_mega(["run", "--on", "vertex", "--dry-run", *args], root, SETTINGS)
    assert result.returncode == 0, result.stderr
    tasks = all_tasks(json.loads(result.stdout)["pipelineSpec"])
    assert sorted(tasks) == sorted(STAGES)
    for stage, task in tasks.items():
        assert task["cachingOptions"] == {}, stage  # enableCache false is left out
    if note:
        assert note in result.stderr


def test_the_job_id_and_model_id_are_what_vertex_ai_takes(run_mega: Mega, tmp_path: Path) -> None:
    """A dataset with `_` gives a valid PipelineJob ID; a model name Vertex AI would refuse
    at the end of the run (register) is refused before it starts."""
    root = make_project(tmp_path, dataset="my_data")
    result = run_mega(["run", "--on", "vertex", "--dry-run", "--image-tag", "t"], root, SETTINGS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["displayName"].startswith("mega-pipeline-my-data-")
    write_params(root, {"dataset": "my_data", "registry": {"model_name": "9digits"}})
    result = run_mega(["pipeline", "compile", "--image-tag", "t"], root, SETTINGS)
    assert result.returncode == 2
    assert "registry.model_name '9digits' is not a Vertex AI model ID" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--on", "vertex", "-S", "train.epochs=2"], "run DVC experiments, which run here"),
        (["run", "--dry-run"], "mega: error: --dry-run needs --on vertex"),
    ],
)
def test_run_options_of_one_place_only_are_refused(
    run_mega: Mega, tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_mega(args, make_project(tmp_path), SETTINGS)
    assert result.returncode == 2
    assert message in result.stderr


def succeeded_steps(states: dict[str, str]) -> dict[str, Any]:
    """A PipelineJob's final fields with each step in its state (REST: enum names)."""
    details = [{"taskName": name, "state": state} for name, state in states.items()]
    return {"jobDetail": {"taskDetails": [{"taskName": "mega-pipeline"}, *details]}}


def test_submit_stages_params_sends_the_job_and_follows_each_step(
    run_mega: Mega, tmp_path: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    from common import storage

    root = make_project(tmp_path)
    vertex_stub.states = SUCCEEDED
    vertex_stub.final_fields = succeeded_steps(dict.fromkeys(STAGES, "SUCCEEDED"))
    result = run_mega(
        ["run", "--on", "vertex", "--image-tag", "abc123"], root, on_stub(vertex_stub)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (create,) = vertex_stub.created("pipelineJobs")
    assert create.path == "/v1/projects/my-project/locations/europe-west4/pipelineJobs"
    job = create.body
    assert f"pipelineJobId={job['displayName']}" in create.query
    assert job["displayName"].startswith("mega-pipeline-digits-")
    assert job["runtimeConfig"] == {"gcsOutputDirectory": "gs://test-bucket/mega/pipeline-root"}
    assert job["serviceAccount"] == "trainer@my-project.iam.gserviceaccount.com"
    labels = job["labels"]
    digests = labels.pop("data-params").split("-")
    assert labels == {
        "mega-stage": "pipeline",
        "dataset": "digits",
        "git-sha": "unknown",  # not a git checkout: the image tag was given
        "image-tag": "abc123",
    }
    # The params that make the data: collect's and process's digests, as their files.
    staged = {uri.rsplit("/", 1)[-1] for uri in storage.list_files(f"{PARAMS}")}
    assert {f"collect-{digests[0]}.yaml", f"process-{digests[1]}.yaml"} <= staged
    spec = job["pipelineSpec"]
    assert spec["pipelineInfo"]["name"] == "mega-pipeline"
    assert executor(spec, "train")["image"] == f"{REPOSITORY}/model-training:abc123"
    # params.yaml staged once per stage digest, byte for byte.
    staged = list(storage.list_files(PARAMS))
    assert len(staged) == 5
    for uri in staged:
        assert storage.read_bytes(uri) == (root / "params.yaml").read_bytes()
    # Followed step by step, with the links.
    out = result.stdout
    assert "PIPELINE_STATE_RUNNING" in out and "PIPELINE_STATE_SUCCEEDED" in out
    positions = [out.index(f"{stage}: SUCCEEDED") for stage in STAGES]
    assert positions == sorted(positions)
    assert "mega-pipeline: " not in out  # the run's own DAG task is not a step
    assert "/vertex-ai/locations/europe-west4/pipelines/runs/1000?project=my-project" in out
    assert "gate:" not in out
    assert out.index("register: SUCCEEDED") < out.index("PIPELINE_STATE_SUCCEEDED")
    assert "registered: gs://test-bucket/mega/models/digits-cnn/ and the Vertex AI" in out
    for request in vertex_stub.requests:
        assert SECRET not in request.raw + request.path + request.query + str(request.headers)
    assert SECRET not in result.stdout + result.stderr


def test_a_second_run_uploads_no_params_again(
    run_mega: Mega, tmp_path: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    root = make_project(tmp_path)
    args = ["run", "--on", "vertex", "--detach", "--image-tag", "t"]
    first = run_mega(args, root, on_stub(vertex_stub))
    assert first.returncode == 0, first.stderr
    assert "(5 file(s) uploaded" in first.stdout
    second = run_mega(args, root, on_stub(vertex_stub))
    assert "(0 file(s) uploaded" in second.stdout and "detached" in second.stdout
    assert not vertex_stub.reads  # detached: created, never read


def test_a_closed_gate_is_said(
    run_mega: Mega, tmp_path: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    root = make_project(tmp_path)
    vertex_stub.states = SUCCEEDED
    closed = {"optimize": "NOT_TRIGGERED", "register": "NOT_TRIGGERED"}
    vertex_stub.final_fields = succeeded_steps({**dict.fromkeys(STAGES[:4], "SUCCEEDED"), **closed})
    result = run_mega(["run", "--on", "vertex", "--image-tag", "t"], root, on_stub(vertex_stub))
    assert result.returncode == 0, result.stderr
    assert "gate: the candidate is below registry.min_accuracy" in result.stdout
    assert "register: NOT_TRIGGERED (behind the gate, which stayed closed)" in result.stdout


def test_cached_steps_are_said_to_be_cached_not_gated(
    run_mega: Mega, tmp_path: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    """Vertex AI calls a step served from its cache SKIPPED: not a closed gate."""
    root = make_project(tmp_path)
    vertex_stub.states = SUCCEEDED
    cached = {**dict.fromkeys(STAGES[:5], "SKIPPED"), "register": "SUCCEEDED"}
    vertex_stub.final_fields = succeeded_steps(cached)
    result = run_mega(["run", "--on", "vertex", "--image-tag", "t"], root, on_stub(vertex_stub))
    assert result.returncode == 0, result.stderr
    assert "train: SKIPPED (cached: the outputs of an earlier run" in result.stdout
    assert "gate:" not in result.stdout and "registered: " in result.stdout


def test_a_failed_run_is_one_line_and_exit_1(
    run_mega: Mega, tmp_path: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    root = make_project(tmp_path)
    vertex_stub.states = ["PIPELINE_STATE_RUNNING", "PIPELINE_STATE_FAILED"]
    vertex_stub.final_fields = {
        "error": {"code": 9, "message": "The DAG failed because some tasks failed: train"},
        **succeeded_steps({"collect": "SUCCEEDED", "process": "SUCCEEDED", "train": "FAILED"}),
    }
    result = run_mega(["run", "--on", "vertex", "--image-tag", "t"], root, on_stub(vertex_stub))
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert "PIPELINE_STATE_FAILED" in line and "some tasks failed: train" in line
    assert "train: FAILED" in result.stdout


def test_a_disabled_api_is_said_before_any_upload(
    run_mega: Mega, tmp_path: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    from common import storage

    root = make_project(tmp_path)
    vertex_stub.fail_with = (
        403,
        google_error(403, "Vertex AI API has not been used in project", "SERVICE_DISABLED"),
    )
    result = run_mega(["run", "--on", "vertex", "--image-tag", "t"], root, on_stub(vertex_stub))
    assert_one_line_service_error(result, "mega", "Vertex AI")
    assert "gcloud services enable aiplatform.googleapis.com" in result.stderr
    assert not list(storage.list_files("gs://test-bucket/mega/pipeline/params"))
