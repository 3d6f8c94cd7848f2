"""Fixtures shared by every test tier: the storage emulator, a tiny trained model, a live API."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import (
    BIN,
    REPO,
    RunningApi,
    TinyPipeline,
    free_port,
    launch_api,
    run_cli,
    write_params,
)


@contextlib.contextmanager
def running_storage_emulator() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A gcp-storage-emulator on a free loopback port with bucket `test-bucket`, and its process."""
    from common import storage

    port = free_port()
    process = subprocess.Popen(
        [
            str(BIN / "gcp-storage-emulator"),
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
            "--default-bucket",
            "test-bucket",
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    host = f"http://127.0.0.1:{port}"
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    storage.gcs_client.cache_clear()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{host}/storage/v1/b", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield "gs://test-bucket", process
    finally:
        process.terminate()
        process.wait(timeout=10)
        storage.gcs_client.cache_clear()
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old


@pytest.fixture
def storage_emulator() -> Iterator[str]:
    """A gcp-storage-emulator on a free loopback port, with bucket `test-bucket`."""
    with running_storage_emulator() as (uri, _):
        yield uri


@pytest.fixture
def storage_emulator_process() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Like `storage_emulator`, with the process, for tests that stop the emulator."""
    with running_storage_emulator() as running:
        yield running


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> TinyPipeline:
    """Run every stage's CLI once on tiny data; shared by API, browser and trainer tests."""
    root = tmp_path_factory.mktemp("tiny-pipeline")
    write_params(root)
    py = sys.executable
    env = {"MEGA_WANDB_MODE": "disabled"}
    run_cli([py, "-m", "collector", "--out", "data/raw/digits"], root, env)
    run_cli(
        [py, "-m", "processor", "--raw", "data/raw/digits", "--out", "data/processed/digits"],
        root,
        env,
    )
    run_cli(
        [
            py,
            "-m",
            "trainer",
            "train",
            "--data",
            "data/processed/digits",
            "--out",
            "models/candidate",
        ],
        root,
        env,
    )
    run_cli(
        [
            py,
            "-m",
            "trainer",
            "evaluate",
            "--model",
            "models/candidate",
            "--data",
            "data/processed/digits",
            "--metrics",
            "reports/metrics.json",
            "--details",
            "reports/evaluation.json",
        ],
        root,
        env,
    )
    run_cli(
        [
            py,
            "-m",
            "trainer",
            "register",
            "--model",
            "models/candidate",
            "--metrics",
            "reports/metrics.json",
            "--registry",
            "models",
        ],
        root,
        env,
    )
    return TinyPipeline(
        root=root,
        raw=root / "data/raw/digits",
        processed=root / "data/processed/digits",
        candidate=root / "models/candidate",
        models=root / "models",
    )


@pytest.fixture(scope="session")
def live_api(tiny_pipeline: TinyPipeline) -> Iterator[RunningApi]:
    """The API and page serving the tiny pipeline's production model (`python -m api_service`)."""
    with launch_api(
        tiny_pipeline.models,
        live=True,
        static_dir=REPO / "src/frontend/public",
        cwd=tiny_pipeline.root,
    ) as server:
        yield server


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """A per-test folder under test-output/ for screenshots and other artefacts."""
    folder = REPO / "test-output" / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder
