"""`mega train --on vertex`: the CustomJob body, sent to a loopback Vertex AI stub.

The bodies are asserted field by field as the REST API receives them (enums as
integers, int64 as strings); the data and params.yaml are staged in the storage
emulator; no secret may appear in any request, URL or output.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mega_cli import MEGA, REPOSITORY, SECRET, SETTINGS, Mega, mega, on_stub, run_mega
from service_stubs import QUICK_BUDGET, assert_one_line_service_error, service_fault
from support import REPO, run_cli, write_params
from vertex_stub import VertexStub, google_error, vertex_stub

from common.cli import EXIT_INTERRUPTED
from common.params import VertexParams

__all__ = ["run_mega", "service_fault", "vertex_stub"]  # fixtures, imported for pytest


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Processed digits (300 items), made once for the module."""
    root = tmp_path_factory.mktemp("processed")
    write_params(root, {"collect": {"limit": 300}})
    py = sys.executable
    run_cli([py, "-m", "collector", "--out", "raw"], root, {})
    run_cli([py, "-m", "processor", "--raw", "raw", "--out", "processed"], root, {})
    return root / "processed"


def make_project(root: Path, processed: Path | None, vertex: dict | None = None) -> Path:
    """A project folder: dvc.yaml, params.yaml (with `vertex`), the processed digits."""
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    write_params(root, {"vertex": vertex or {}})
    if processed is not None:
        shutil.copytree(processed, root / "data/processed/digits")
    return root


@pytest.fixture
def project(tmp_path: Path, processed: Path) -> Path:
    return make_project(tmp_path, processed, {"workers": 2, "accelerator_count": 1})


# --- the body, without any service --------------------------------------------------


def test_dry_run_on_a_fresh_clone_prints_two_pools_and_a_gpu(tmp_path: Path) -> None:
    """No settings and no data, as on a fresh clone: the body, with the unset named."""
    root = make_project(tmp_path, None, {"workers": 2, "accelerator_count": 1})
    result = mega(["train", "--on", "vertex", "--dry-run", "--image-tag", "abc123"], root, {})
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    pools = job["jobSpec"]["workerPoolSpecs"]
    assert [pool["replicaCount"] for pool in pools] == ["1", "1"]
    for pool in pools:
        assert pool["machineSpec"] == {
            "machineType": "n1-standard-4",
            "acceleratorType": "NVIDIA_TESLA_T4",
            "acceleratorCount": 1,
        }
        image = pool["containerSpec"]["imageUri"]
        assert image == "<MEGA_IMAGE_REPOSITORY>/model-training:abc123-gpu"
    assert "MEGA_GCP_PROJECT, MEGA_GCS_ROOT, MEGA_IMAGE_REPOSITORY unset" in result.stderr
    assert "nothing was sent" in result.stderr


def test_dry_run_of_one_cpu_worker(run_mega: Mega, tmp_path: Path, processed: Path) -> None:
    root = make_project(tmp_path, processed, {"machine_type": "e2-standard-8"})
    env = {k: v for k, v in SETTINGS.items() if k != "MEGA_WANDB_SECRET"}
    result = run_mega(["train", "--on", "vertex", "--dry-run", "--image-tag", "abc123"], root, env)
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    (pool,) = job["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": "e2-standard-8"}
    assert pool["containerSpec"]["imageUri"] == f"{REPOSITORY}/model-training:abc123"
    env_vars = {e["name"]: e["value"] for e in pool["containerSpec"]["env"]}
    # Without a secret for the key, W&B is off: an offline run would die with the container.
    assert env_vars["MEGA_WANDB_MODE"] == "disabled"
    assert "MEGA_WANDB_SECRET" not in env_vars
    data = pool["containerSpec"]["args"][2]
    assert data.startswith("gs://test-bucket/mega/data/processed/digits/")
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("vertex", "message"),
    [
        ({"accelerator_count": 1, "accelerator_type": "NVIDIA_T4000"}, "NVIDIA_TESLA_T4"),
        ({"workers": 0}, "vertex.workers"),
        ({"machine_type": "N1 Standard"}, "vertex.machine_type"),
    ],
)
def test_bad_vertex_params_are_usage_errors(
    run_mega: Mega, tmp_path: Path, vertex: dict, message: str
) -> None:
    root = make_project(tmp_path, None, vertex)
    result = run_mega(["train", "--on", "vertex", "--dry-run", "--image-tag", "t"], root, {})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr


def test_missing_settings_are_named_before_any_request(
    run_mega: Mega, tmp_path: Path, processed: Path
) -> None:
    root = make_project(tmp_path, processed)
    env = {"MEGA_GCP_PROJECT": "my-project"}
    result = run_mega(["train", "--on", "vertex", "--image-tag", "t"], root, env)
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "error" in line]
    assert "MEGA_GCS_ROOT" in line and "MEGA_IMAGE_REPOSITORY" in line
    assert "MEGA_GCP_PROJECT" not in line


def test_outside_git_the_image_tag_is_asked_for(run_mega: Mega, tmp_path: Path) -> None:
    root = make_project(tmp_path, None)
    result = run_mega(["train", "--on", "vertex", "--dry-run"], root, {})
    assert result.returncode == 2
    assert "not a git checkout" in result.stderr and "--image-tag" in result.stderr


def test_vertex_only_options_need_on_vertex(run_mega: Mega, tmp_path: Path) -> None:
    root = make_project(tmp_path, None)
    result = run_mega(["train", "--dry-run"], root, {})
    assert result.returncode == 2
    assert "mega: error: --dry-run needs --on vertex" in result.stderr
    both = run_mega(["train", "--detach", "--data", "gs://b/d"], root, {})
    assert "--detach and --data need --on vertex" in both.stderr


def test_pools_for_workers() -> None:
    from workflow.vertex import worker_pool_specs

    pools = worker_pool_specs(VertexParams(workers=4), "img", ["train"], {"A": "b"})
    assert [p.replica_count for p in pools] == [1, 3]
    assert all(p.machine_spec.accelerator_count == 0 for p in pools)
    assert [e.name for e in pools[1].container_spec.env] == ["A"]


# --- submitting to the stub ------------------------------------------------------------


def test_submit_sends_the_job_stages_the_inputs_and_follows_it(
    project: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    result = mega(
        ["train", "--on", "vertex", "--image-tag", "abc123"], project, on_stub(vertex_stub)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (create,) = vertex_stub.created("customJobs")
    assert create.path == "/v1/projects/my-project/locations/europe-west4/customJobs"
    job = create.body
    assert job["displayName"].startswith("mega-train-digits-")
    spec = job["jobSpec"]
    output = f"gs://test-bucket/mega/vertex/{job['displayName']}"
    assert spec["baseOutputDirectory"] == {"outputUriPrefix": output}
    assert spec["serviceAccount"] == "trainer@my-project.iam.gserviceaccount.com"
    assert spec["scheduling"] == {"timeout": "86400s", "restartJobOnWorkerRestart": True}
    pools = spec["workerPoolSpecs"]
    assert [pool["replicaCount"] for pool in pools] == ["1", "1"]
    data_hash = json.loads((project / "data/processed/digits/stats.json").read_text())
    data = f"gs://test-bucket/mega/data/processed/digits/{data_hash['data_hash'][:12]}"
    for pool in pools:
        # Enums travel as integers: NVIDIA_TESLA_T4 is 5.
        assert pool["machineSpec"] == {
            "machineType": "n1-standard-4",
            "acceleratorType": 5,
            "acceleratorCount": 1,
        }
        assert pool["diskSpec"] == {"bootDiskSizeGb": 100}
        container = pool["containerSpec"]
        assert container["imageUri"] == f"{REPOSITORY}/model-training:abc123-gpu"
        assert container["args"] == ["train", "--data", data, "--params", f"{output}/params.yaml"]
        assert container["env"] == [
            {"name": "MEGA_GCP_PROJECT", "value": "my-project"},
            {"name": "MEGA_WANDB_MODE", "value": "online"},
            {"name": "MEGA_WANDB_PROJECT", "value": "mega-pipeline"},
            {"name": "MEGA_WANDB_SECRET", "value": "wandb-api-key"},
        ]
    assert (
        job["labels"]
        == {
            "mega-stage": "train",
            "dataset": "digits",
            "git-sha": "unknown",  # not a git checkout: the image tag was given
            "image-tag": "abc123",
            "data-version": data_hash["data_hash"][:12],
        }
    )
    # Followed to the end, with the links.
    assert "JOB_STATE_RUNNING" in result.stdout and "JOB_STATE_SUCCEEDED" in result.stdout
    assert f"trained: the candidate is in {output}/model/" in result.stdout
    assert "/training/1000?project=my-project" in result.stdout
    # The inputs are in the bucket.
    from common import storage

    assert storage.exists(f"{data}/stats.json")
    assert storage.read_bytes(f"{output}/params.yaml") == (project / "params.yaml").read_bytes()
    # No secret anywhere: bodies, URLs, headers, output.
    for request in vertex_stub.requests:
        assert SECRET not in request.raw + request.path + request.query + str(request.headers)
    assert SECRET not in result.stdout + result.stderr


def test_data_is_staged_once_per_version(
    run_mega: Mega, project: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    env = on_stub(vertex_stub)
    first = run_mega(["train", "--on", "vertex", "--detach", "--image-tag", "t"], project, env)
    assert first.returncode == 0, first.stderr
    files = len(list((project / "data/processed/digits").rglob("*.*")))
    assert f"({files} file(s) uploaded" in first.stdout
    second = run_mega(["train", "--on", "vertex", "--detach", "--image-tag", "t"], project, env)
    assert second.returncode == 0, second.stderr
    assert "(0 file(s) uploaded" in second.stdout
    assert "detached" in second.stdout
    # Detached: created, never read.
    assert not vertex_stub.reads


def test_given_data_is_not_uploaded(
    run_mega: Mega, project: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    args = ["train", "--on", "vertex", "--detach", "--image-tag", "t"]
    result = run_mega([*args, "--data", "gs://elsewhere/data"], project, on_stub(vertex_stub))
    assert result.returncode == 0, result.stderr
    container = vertex_stub.created("customJobs")[0].body["jobSpec"]["workerPoolSpecs"][0]
    assert container["containerSpec"]["args"][2] == "gs://elsewhere/data"
    assert vertex_stub.created("customJobs")[0].body["labels"]["data-version"] == "external"
    local = run_mega([*args, "--data", "data/processed/digits"], project, on_stub(vertex_stub))
    assert local.returncode == 2 and "gs:// URI" in local.stderr


def test_a_failed_job_fails_the_command_with_its_error(
    run_mega: Mega, project: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    vertex_stub.states = ["JOB_STATE_RUNNING", "JOB_STATE_FAILED"]
    vertex_stub.final_fields = {"error": {"code": 3, "message": "The replica workerpool0-0 exited"}}
    result = run_mega(
        ["train", "--on", "vertex", "--image-tag", "t"], project, on_stub(vertex_stub)
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "JOB_STATE_FAILED: The replica workerpool0-0 exited" in result.stderr


@pytest.mark.parametrize(
    ("status", "reason", "says"),
    [
        (403, "SERVICE_DISABLED", "gcloud services enable aiplatform.googleapis.com"),
        (403, None, "roles/aiplatform.user"),
        (401, None, "gcloud auth application-default login"),
        (404, None, "MEGA_GCP_REGION"),
        (400, None, "vertex: section of params.yaml"),
    ],
)
def test_vertex_refusals_are_one_line(
    run_mega: Mega,
    project: Path,
    vertex_stub: VertexStub,
    storage_emulator: str,
    status: int,
    reason: str | None,
    says: str,
) -> None:
    vertex_stub.fail_with = (status, google_error(status, "stub refuses", reason))
    result = run_mega(
        ["train", "--on", "vertex", "--image-tag", "t"], project, on_stub(vertex_stub)
    )
    line = assert_one_line_service_error(result, "mega", "Vertex AI")
    assert says in line


def test_a_disabled_api_is_said_before_the_data_is_uploaded(
    run_mega: Mega, project: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    from common import storage

    vertex_stub.fail_with = (403, google_error(403, "disabled", "SERVICE_DISABLED"))
    result = run_mega(
        ["train", "--on", "vertex", "--image-tag", "t"], project, on_stub(vertex_stub)
    )
    assert_one_line_service_error(result, "mega", "Vertex AI")
    assert [r.method for r in vertex_stub.requests] == ["GET"]  # the one listing
    assert not list(storage.list_files("gs://test-bucket/mega"))


def test_a_create_that_failed_is_not_sent_again(
    run_mega: Mega, project: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    """503 may come after the job was made: a retry could start a second training."""
    vertex_stub.fail_create_with = (503, google_error(503, "backend error"))
    result = run_mega(
        ["train", "--on", "vertex", "--image-tag", "t"], project, on_stub(vertex_stub)
    )
    assert_one_line_service_error(result, "mega", "Vertex AI")
    assert len(vertex_stub.created("customJobs")) == 1


def test_a_failed_read_says_the_job_goes_on(
    run_mega: Mega, project: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    vertex_stub.states = ["JOB_STATE_RUNNING"]
    env = on_stub(vertex_stub, MEGA_VERTEX_POLL_SECONDS="0.05")
    original = vertex_stub.next_state

    def then_fail(name: str) -> str:
        if vertex_stub.reads.get(name, 0) >= 2:
            vertex_stub.fail_with = (403, google_error(403, "token expired"))
        return original(name)

    vertex_stub.next_state = then_fail  # type: ignore[method-assign]
    result = run_mega(["train", "--on", "vertex", "--image-tag", "t"], project, env)
    line = assert_one_line_service_error(result, "mega", "Vertex AI")
    assert "custom job 1000 goes on running on Vertex AI" in line


def test_following_stops_past_the_jobs_own_timeout(
    run_mega: Mega, tmp_path: Path, processed: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    """A job queued for ever (no GPUs free) is not followed for ever."""
    root = make_project(tmp_path, processed, {"timeout_hours": 0.0001})
    vertex_stub.states = ["JOB_STATE_PENDING"]
    env = on_stub(vertex_stub, MEGA_VERTEX_POLL_SECONDS="0.05")
    result = run_mega(["train", "--on", "vertex", "--image-tag", "t"], root, env)
    assert result.returncode == 1
    assert "stopped following custom job 1000, still JOB_STATE_PENDING" in result.stderr
    assert not [r for r in vertex_stub.requests if r.path.endswith(":cancel")]


def test_dry_run_needs_no_data_even_with_every_setting(run_mega: Mega, tmp_path: Path) -> None:
    root = make_project(tmp_path, None)
    result = run_mega(["train", "--on", "vertex", "--dry-run", "--image-tag", "t"], root, SETTINGS)
    assert result.returncode == 0, result.stderr
    assert "<data version: run `mega process` first>" in result.stdout


def test_unreachable_vertex_fails_in_seconds(
    run_mega: Mega, project: Path, service_fault: str, storage_emulator: str
) -> None:
    env = {**SETTINGS, "MEGA_VERTEX_ENDPOINT": service_fault}
    env["STORAGE_EMULATOR_HOST"] = os.environ["STORAGE_EMULATOR_HOST"]
    started = time.monotonic()
    result = run_mega(["train", "--on", "vertex", "--image-tag", "t"], project, env)
    assert_one_line_service_error(result, "mega", "Vertex AI")
    assert time.monotonic() - started < 40


def test_a_missing_bucket_is_named(
    run_mega: Mega, project: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    env = on_stub(vertex_stub, MEGA_GCS_ROOT="gs://no-such-bucket/mega")
    result = run_mega(["train", "--on", "vertex", "--image-tag", "t"], project, env)
    line = assert_one_line_service_error(result, "mega", "Cloud Storage")
    assert "bucket no-such-bucket does not exist" in line
    assert "gcloud storage buckets create gs://no-such-bucket" in line
    assert not vertex_stub.created("customJobs")


def test_no_credentials_is_one_line(run_mega: Mega, project: Path, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in SETTINGS.items() if k != "WANDB_API_KEY"},
        "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "absent.json"),
    }
    result = run_mega(["train", "--on", "vertex", "--image-tag", "t"], project, env)
    line = assert_one_line_service_error(result, "mega", "Vertex AI")
    assert "no Google credentials found" in line


def test_ctrl_c_off_a_terminal_leaves_the_job_running(
    project: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    vertex_stub.states = ["JOB_STATE_RUNNING"]
    env = {**os.environ, **QUICK_BUDGET, **on_stub(vertex_stub), "MEGA_VERTEX_POLL_SECONDS": "0.2"}
    process = subprocess.Popen(
        [MEGA, "train", "--on", "vertex", "--image-tag", "t"],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not vertex_stub.reads:  # following the job
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == EXIT_INTERRUPTED, out + err
    assert "goes on running" in out
    assert not [r for r in vertex_stub.requests if r.path.endswith(":cancel")]


def test_ctrl_c_on_a_terminal_cancels_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from workflow import vertex_jobs

    cancelled: list[bool] = []

    def interrupted() -> object:
        raise KeyboardInterrupt

    handle = vertex_jobs.JobHandle(
        name="projects/p/locations/r/customJobs/7",
        kind="custom job",
        get=interrupted,
        cancel=lambda: cancelled.append(True),
        progress=lambda job: "",
    )
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("typer.confirm", lambda *a, **k: True)
    with pytest.raises(SystemExit) as exit_info:
        vertex_jobs.follow(handle, Console(file=open(os.devnull, "w")), 0, 60)  # noqa: SIM115
    assert exit_info.value.code == EXIT_INTERRUPTED
    assert cancelled == [True]


# --- mega tune --on vertex ---------------------------------------------------------------

TRIALS = [
    {
        "id": "1",
        "state": "SUCCEEDED",
        "parameters": [
            {"parameterId": "train.learning_rate", "value": 0.004},
            {"parameterId": "train.batch_size", "value": 64.0},
        ],
        "finalMeasurement": {"metrics": [{"metricId": "val_accuracy", "value": 0.93}]},
        "endTime": "2026-12-01T00:00:00Z",
    },
    {
        "id": "2",
        "state": "SUCCEEDED",
        "parameters": [
            {"parameterId": "train.learning_rate", "value": 0.0021},
            {"parameterId": "train.batch_size", "value": 32.0},
        ],
        "finalMeasurement": {"metrics": [{"metricId": "val_accuracy", "value": 0.97}]},
        "endTime": "2026-12-01T00:01:00Z",
    },
    {"id": "3", "state": "INFEASIBLE", "parameters": [], "endTime": "2026-12-01T00:02:00Z"},
]


def test_tune_dry_run_prints_the_study(run_mega: Mega, tmp_path: Path) -> None:
    root = make_project(tmp_path, None, {"workers": 2})
    args = ["tune", "--on", "vertex", "--dry-run", "--image-tag", "t", "--trials", "1"]
    result = run_mega(args, root, {})
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["maxTrialCount"] == 1 and job["parallelTrialCount"] == 1
    assert job["studySpec"]["metrics"] == [{"metricId": "val_accuracy", "goal": "MAXIMIZE"}]
    assert {p["parameterId"] for p in job["studySpec"]["parameters"]} == {
        "train.learning_rate",
        "train.batch_size",
    }
    assert len(job["trialJobSpec"]["workerPoolSpecs"]) == 2
    assert "hyperparameterTuningJobs creates it" in result.stderr


def test_tune_on_vertex_sends_the_study_and_keeps_the_best_trial(
    run_mega: Mega, project: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    vertex_stub.final_fields = {"trials": TRIALS}
    result = run_mega(["tune", "--on", "vertex", "--image-tag", "t"], project, on_stub(vertex_stub))
    assert result.returncode == 0, result.stdout + result.stderr
    (create,) = vertex_stub.created("hyperparameterTuningJobs")
    assert create.path == "/v1/projects/my-project/locations/europe-west4/hyperparameterTuningJobs"
    job = create.body
    assert job["displayName"].startswith("mega-tune-digits-")
    assert job["maxTrialCount"] == 8 and job["parallelTrialCount"] == 2
    study = job["studySpec"]
    assert study["metrics"] == [{"metricId": "val_accuracy", "goal": 1}]  # MAXIMIZE
    by_id = {p["parameterId"]: p for p in study["parameters"]}
    learning_rate, batch_size = by_id["train.learning_rate"], by_id["train.batch_size"]
    assert learning_rate == {
        "parameterId": "train.learning_rate",
        "doubleValueSpec": {"minValue": 0.0005, "maxValue": 0.01},
        "scaleType": 2,  # UNIT_LOG_SCALE
    }
    assert batch_size == {
        "parameterId": "train.batch_size",
        "discreteValueSpec": {"values": [32.0, 64.0, 128.0]},
    }
    trial = job["trialJobSpec"]
    output = f"gs://test-bucket/mega/vertex/{job['displayName']}"
    assert trial["baseOutputDirectory"] == {"outputUriPrefix": output}
    assert trial["serviceAccount"] == "trainer@my-project.iam.gserviceaccount.com"
    for pool in trial["workerPoolSpecs"]:
        container = pool["containerSpec"]
        assert container["args"][:2] == ["train", "--data"]
        assert container["args"][3:] == ["--params", f"{output}/params.yaml"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["CLOUD_ML_HP_METRIC_FILE"] == "/tmp/hypertune/output.metrics"
        assert env["WANDB_RUN_GROUP"] == job["displayName"]
        assert env["MEGA_WANDB_SECRET"] == "wandb-api-key"
    assert job["labels"]["mega-stage"] == "tune"
    # The best succeeded trial (2), its values typed by the schema.
    best = (project / "tuning/best.yaml").read_text()
    assert "train.learning_rate: 0.0021\ntrain.batch_size: 32\n" in best
    assert "trial 2" in best and "val_accuracy: 0.97" in best
    assert "best: trial 2, val_accuracy 0.9700" in result.stdout
    assert "3/8 trials finished" in result.stdout
    for request in vertex_stub.requests:
        assert SECRET not in request.raw + request.path + request.query + str(request.headers)


def test_tune_on_vertex_without_a_scored_trial_fails(
    run_mega: Mega, project: Path, vertex_stub: VertexStub, storage_emulator: str
) -> None:
    vertex_stub.final_fields = {"trials": TRIALS[2:]}
    result = run_mega(["tune", "--on", "vertex", "--image-tag", "t"], project, on_stub(vertex_stub))
    assert result.returncode == 1
    assert "reported val_accuracy" in result.stderr
    assert not (project / "tuning/best.yaml").exists()
