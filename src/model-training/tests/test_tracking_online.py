"""Online W&B that cannot be reached or refuses the key: one line, exit 69, no training."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from service_stubs import (
    QUICK_BUDGET,
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
