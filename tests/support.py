"""Helpers for tests: free ports, waiting for servers, running CLIs, tiny pipelines."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Tiny but real parameters: small enough for seconds, big enough to learn.
TINY_PARAMS = {
    "dataset": "digits",
    "collect": {"source": "digits", "limit": 500},
    "process": {
        "image_size": 16,
        "color_mode": "grayscale",
        "split": {"train": 0.7, "val": 0.1, "test": 0.2},
        "shard_target_mb": 0.02,
    },
    "train": {
        "model": "small_cnn",
        "epochs": 6,
        "batch_size": 32,
        "learning_rate": 0.003,
        "seed": 7,
        "tracking": "none",
    },
    "registry": {"model_name": "digits-cnn", "min_accuracy": 0.5, "min_macro_f1": 0.5},
    # Short pruning and distillation, fewer timing runs: the pipeline's tests check the
    # stage's plumbing; tests/…/test_optimize.py and the benchmark check its results.
    "optimize": {
        "representative_examples": 64,
        "latency_runs": 50,
        "pruning": {"epochs": 1},
        "distill": {"filters": [16, 32], "dense": 32, "epochs": 2},
    },
}


def lock_pins(lock: Path) -> dict[str, str]:
    """A lock's `name==version` lines (requirements/lock.txt): canonical name → version."""
    from packaging.utils import canonicalize_name

    found: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith((" ", "#")):
            found[canonicalize_name(name)] = version.strip()
    return found


# A git identity for the commits tests make in their own repositories.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def start_server(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """An HTTP server on a free loopback port, serving `handler` from a daemon thread,
    and its `http://127.0.0.1:PORT`; stop it with `shutdown()` and `server_close()`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200, failing early if `process` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a CLI of this environment; fail with its output if it fails."""
    result = subprocess.run(
        args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


@dataclass
class TinyPipeline:
    """A folder where collect → process → train → evaluate → register ran on tiny data."""

    root: Path
    raw: Path
    processed: Path
    candidate: Path
    models: Path

    def test_images(self) -> list[tuple[Path, str]]:
        """(path, label) of raw images that fell in the test split."""
        from common.contracts import read_manifest
        from processor.process import assign_split

        ratios = TINY_PARAMS["process"]["split"]
        return [
            (self.raw / item.path, item.label)
            for item in read_manifest(str(self.raw / "manifest.jsonl"))
            if assign_split(item.sha256, ratios) == "test"
        ]


def write_params(folder: Path, overrides: dict | None = None) -> Path:
    """params.yaml with every key of the schema (dvc.yaml names keys one by one, and DVC
    refuses a stage whose key is missing), TINY_PARAMS over the defaults, then overrides."""
    from common.params import PipelineParams

    params = PipelineParams().model_dump(mode="json")
    for section, values in [*TINY_PARAMS.items(), *(overrides or {}).items()]:
        params[section] = {**params[section], **values} if isinstance(values, dict) else values
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@dataclass
class RunningApi:
    """An API a test started with `launch_api`.

    `client` sends requests to it (base URL set; a FastAPI `TestClient` in process),
    `url` is where it listens, `app` is the application (in process) and `process`
    the `python -m api_service` process (live).
    """

    url: str
    client: httpx.Client
    app: Any = None
    process: subprocess.Popen | None = None

    def stop(self) -> None:
        """Stop a live server now (leaving the `with` block does it too)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


def _setting_value(value: object) -> str:
    """A settings value as its MEGA_* variable writes it (lists comma-separated)."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


@contextlib.contextmanager
def launch_api(
    models: Path | str,
    *,
    live: bool = False,
    command: Sequence[str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
    **settings: Any,
) -> Iterator[RunningApi]:
    """Start the API on the registry at `models` with `settings` (ServingSettings fields).

    In process (default): `create_app` behind a `TestClient`, started and stopped with
    the block. `live=True`: `command` (default `python -m api_service`; `mega serve`
    reads the same variables) on a loopback port (`serve_port`, default a free one),
    configured through MEGA_* variables, run in `cwd` (default: the registry's parent)
    with its stderr in `log`; the block starts once /readyz answers 200 and ends by
    stopping it.
    """
    from api_service.settings import ServingSettings

    settings = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}
    config = ServingSettings(models_root=str(models), **settings)  # a typo fails here
    if not live:
        from fastapi.testclient import TestClient

        from api_service.app import create_app

        app = create_app(config)
        with TestClient(app) as client:
            yield RunningApi(url=str(client.base_url), client=client, app=app)
        return
    port = settings.pop("serve_port", None) or free_port()
    given = {"models_root": str(models), "serve_host": "127.0.0.1", "serve_port": port}
    env = {f"MEGA_{k.upper()}": _setting_value(v) for k, v in {**settings, **given}.items()}
    with contextlib.ExitStack() as stack:
        stderr = stack.enter_context(open(log, "w")) if log else subprocess.DEVNULL
        process = subprocess.Popen(
            list(command or [sys.executable, "-m", "api_service"]),
            cwd=cwd or Path(models).parent,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        url = f"http://127.0.0.1:{port}"
        client = stack.enter_context(httpx.Client(base_url=url))
        server = RunningApi(url=url, client=client, process=process)
        stack.callback(server.stop)
        wait_for_http(f"{url}/readyz", process=process)
        yield server
