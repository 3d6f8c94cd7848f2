"""Fixtures for the API tests: a private registry copy and a live server on it."""

from __future__ import annotations

import contextlib
import itertools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import RunningApi, TinyPipeline, launch_api

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
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningApi]]:
    """Start `python -m api_service` (`launch_api`) on a registry with extra settings; its
    stderr goes to server-<n>.log in the test's folder. Every server stops after the test."""
    started = itertools.count(1)
    with contextlib.ExitStack() as stack:

        def start(models: Path, **settings: object) -> RunningApi:
            log = tmp_path / f"server-{next(started)}.log"
            return stack.enter_context(launch_api(models, live=True, log=log, **settings))

        yield start
