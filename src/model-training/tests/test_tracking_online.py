"""Online W&B that cannot be reached or refuses the key: one line, exit 69, no training.
And the key read from Secret Manager reaches wandb and nothing else."""

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from service_stubs import (
    QUICK_BUDGET,
    SecretManagerStub,
    WandbGoesSilent,
    assert_one_line_service_error,
    service_fault,
)
from support import run_cli, write_params

__all__ = ["service_fault"]  # the fixture, imported for pytest


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with tiny processed data and `train.tracking: wandb`."""
    root = tmp_path_factory.mktemp("online-tracking")
    write_params(root, {"train": {"tracking": "wandb", "epochs": 1}})
    py = sys.executable
    env = {"MEGA_WANDB_MODE": "disabled"}
    run_cli([py, "-m", "collector", "--out", "data/raw/digits", "--no-progress"], root, env)
    run_cli(
        [py, "-m", "processor", "--raw", "data/raw/digits", "--out", "data/processed/digits"],
        root,
        env,
    )
    return root


def online_env(tmp_path: Path, server: str) -> dict[str, str]:
    """The environment of an online run against `server`, W&B's files under `tmp_path`."""
    env = {k: v for k, v in os.environ.items() if k != "MEGA_WANDB_MODE"}
    env.update(QUICK_BUDGET)
    # A fake key through the environment, as users give theirs; never an argument.
    env["WANDB_API_KEY"] = "f" * 40
    env["WANDB_BASE_URL"] = server
    env["MEGA_WANDB_DIR"] = str(tmp_path / "wandb")
    env["WANDB_CONFIG_DIR"] = str(tmp_path / "wandb-config")
    env["WANDB_CACHE_DIR"] = str(tmp_path / "wandb-cache")
    return env


def train(
    processed: Path, tmp_path: Path, env: dict[str, str], *python_flags: str
) -> subprocess.CompletedProcess[str]:
    """`python [flags] -m trainer train` on the tiny data, exporting to tmp_path/candidate."""
    args = ["--data", "data/processed/digits", "--out", str(tmp_path / "candidate")]
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "trainer", "train", *args,
         "--run-dir", str(tmp_path / "run")],
        cwd=processed, env=env, capture_output=True, text=True,
        timeout=500,  # a safety net only; the service budget or finish timeout ends the wait
    )  # fmt: skip


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_unreachable_online_wandb_fails_before_training(
    service_fault: str, processed: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    out = tmp_path / "candidate"
    result = train(processed, tmp_path, online_env(tmp_path, service_fault), "-X", "importtime")
    line = assert_one_line_service_error(result, "train", f"W&B ({service_fault})")
    assert "MEGA_WANDB_MODE=offline" in line and "train.tracking: none" in line
    fault = request.node.callspec.params["service_fault"]
    if fault in ("401", "403"):
        assert "WANDB_API_KEY" in line  # the key is the likely culprit: say so
    else:
        # Nothing answers: found before TensorFlow loads, in seconds, not after it.
        imported = {
            row.rsplit("|", 1)[-1].strip().split(".")[0]
            for row in result.stderr.splitlines()
            if row.startswith("import time:")
        }
        assert "common" in imported and not imported & {"tensorflow", "keras"}
    # No training started: no epoch ran and nothing was exported.
    assert "Epoch 1/" not in result.stdout + result.stderr
    assert not out.exists()


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_wandb_silent_mid_run_keeps_the_model_and_warns(processed: Path, tmp_path: Path) -> None:
    server = WandbGoesSilent()
    env = {**online_env(tmp_path, server.url), "MEGA_WANDB_FINISH_TIMEOUT": "5"}
    out = tmp_path / "candidate"
    try:
        result = train(processed, tmp_path, env)
    finally:
        server.close()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    assert (out / "model.tflite").is_file()  # the training's work is kept
    [warning] = [line for line in result.stderr.splitlines() if "warning: W&B" in line]
    assert f"W&B ({server.url})" in warning and "wandb sync" in warning
    assert "\ntrain: 1 epochs in " in result.stdout


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_key_from_secret_manager_reaches_wandb_and_nothing_else(
    processed: Path, tmp_path: Path
) -> None:
    """As on Vertex AI: no WANDB_API_KEY, MEGA_WANDB_SECRET names the secret. wandb
    authenticates with the key; it is in no output, W&B run file or candidate file."""
    key = "5ec2e7" + "0123456789abcdef" * 2 + "be"  # 40 characters, as W&B keys are
    secrets = SecretManagerStub({"projects/proj/secrets/wandb-api-key": f"{key}\n".encode()})
    server = WandbGoesSilent()
    env = {k: v for k, v in online_env(tmp_path, server.url).items() if k != "WANDB_API_KEY"}
    env.update(
        MEGA_WANDB_SECRET="wandb-api-key",
        MEGA_GCP_PROJECT="proj",
        MEGA_SECRET_MANAGER_ENDPOINT=secrets.url,
        MEGA_WANDB_FINISH_TIMEOUT="5",
    )
    try:
        result = train(processed, tmp_path, env)
    finally:
        server.close()
        secrets.close()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert secrets.paths == ["/v1/projects/proj/secrets/wandb-api-key/versions/latest:access"]
    # wandb signs its requests with the key (HTTP basic auth, user "api").
    basic = "Basic " + base64.b64encode(f"api:{key}".encode()).decode()
    sent = {value for headers in server.headers for name, value in headers.items()
            if name.lower() == "authorization"}  # fmt: skip
    assert basic in sent, sent
    forms = [key, base64.b64encode(key.encode()).decode(), basic]
    assert not [form for form in forms if form in output]
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    config = [path for path in written if path.name == "config.yaml"]
    assert config, "the W&B run wrote no config.yaml"
    assert (tmp_path / "candidate/model.tflite") in written
    leaked = [path for path in written if any(form.encode() in path.read_bytes() for form in forms)]
    assert not leaked, leaked
