"""Fixtures for the API tests: a private registry copy and a live server on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import LiveServer, TinyPipeline, free_port, wait_for_http

from common.registry import ModelRegistry

MODEL = "digits-cnn"


@pytest.fixture
def registry_copy(tiny_pipeline: TinyPipeline, tmp_path: Path) -> ModelRegistry:
    """A registry of our own (version 1 = the tiny pipeline's model) that a test may change."""
    root = tmp_path / "models"
    shutil.copytree(tiny_pipeline.models / MODEL, root / MODEL)
    return ModelRegistry(root, MODEL)


@pytest.fixture
def publish_variant(registry_copy: ModelRegistry, tmp_path: Path) -> Callable[..., str]:
    """Publish a copy of version 1 made distinct by a note (optionally with a broken model)."""

    def publish(tag: str, tflite: bytes | None = None) -> str:
        folder = tmp_path / f"variant-{tag}"
        shutil.copytree(registry_copy.version_uri("1"), folder)
        (folder / "version.json").unlink()
        (folder / "note.txt").write_text(tag)
        if tflite is not None:
            (folder / "model.tflite").write_bytes(tflite)
        return registry_copy.publish(folder)

    return publish


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start `python -m api_service` on a registry with extra MEGA_* settings; stop it after."""
    servers: list[LiveServer] = []

    def start(models: Path, **env: str) -> LiveServer:
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "api_service",
                "--port",
                str(port),
                "--models-root",
                str(models),
            ],
            cwd=models.parent,
            env={**os.environ, **{f"MEGA_{k.upper()}": v for k, v in env.items()}},
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / f"server-{port}.log", "w"),  # noqa: SIM115
        )
        server = LiveServer(url=f"http://127.0.0.1:{port}", process=process)
        servers.append(server)
        wait_for_http(f"{server.url}/readyz", timeout=60, process=process)
        return server

    yield start
    for server in servers:
        server.stop()
