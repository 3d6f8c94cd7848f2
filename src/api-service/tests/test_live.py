"""Against a real server process: hot swap under load, a failed load, limits over a socket,
and schemathesis on the OpenAPI schema."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from support import BIN, RunningApi, TinyPipeline

from common.registry import ModelRegistry

pytestmark = pytest.mark.integration


class Traffic:
    """Clients posting the same image back to back until stopped, recording each answer."""

    def __init__(self, url: str, image: bytes, clients: int = 4) -> None:
        self.url = url
        self.image = image
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.versions: list[str] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                try:
                    response = http.post(
                        f"{self.url}/v1/predict", files={"file": ("d.png", self.image)}
                    )
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    self.versions.append(response.json()["model_version"])

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=20)


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


def ready(server: RunningApi) -> dict:
    return dict(httpx.get(f"{server.url}/readyz", timeout=5).json())


@pytest.mark.slow
def test_hot_swap_under_load_has_no_failed_request(
    registry_copy: ModelRegistry,
    tiny_pipeline: TinyPipeline,
    start_server: Callable[..., RunningApi],
    publish_variant: Callable[..., str],
) -> None:
    server = start_server(Path(registry_copy.root), model_poll_seconds=0.2)
    new = publish_variant("v2")
    image = tiny_pipeline.test_images()[0][0].read_bytes()
    with Traffic(server.url, image) as traffic:
        wait_for(lambda: len(traffic.statuses) > 30)
        registry_copy.set_alias("production", new)
        wait_for(lambda: ready(server)["model_version"] == new)
        seen = len(traffic.statuses)
        wait_for(lambda: len(traffic.statuses) > seen + 30)
    assert traffic.errors == []
    assert set(traffic.statuses) == {200}, "a request failed during the swap"
    assert traffic.versions[0] == "1" and traffic.versions[-1] == new
    # Once a request saw the new version, no later one went back to the old.
    first_new = traffic.versions.index(new)
    assert set(traffic.versions[first_new + 8 :]) == {new}  # 4 clients: a few in flight
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert "mega_model_swaps_total 1.0" in metrics
    assert f'mega_model_info{{alias="production",name="digits-cnn",version="{new}"}} 1.0' in metrics


@pytest.mark.slow
def test_a_version_that_fails_to_load_leaves_the_old_one_serving(
    registry_copy: ModelRegistry,
    tiny_pipeline: TinyPipeline,
    start_server: Callable[..., RunningApi],
    publish_variant: Callable[..., str],
) -> None:
    server = start_server(Path(registry_copy.root), model_poll_seconds=0.2)
    broken = publish_variant("broken", tflite=b"not a model")
    registry_copy.set_alias("production", broken)
    wait_for(lambda: ready(server)["load_error"] is not None)
    detail = ready(server)
    assert detail["model_version"] == "1" and detail["alias_version"] == broken
    assert detail["load_error"]["version"] == broken and detail["load_error"]["message"]
    path, _ = tiny_pipeline.test_images()[0]
    response = httpx.post(
        f"{server.url}/v1/predict", files={"file": (path.name, path.read_bytes())}, timeout=10
    )
    assert response.status_code == 200 and response.json()["model_version"] == "1"
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert "mega_model_load_failing 1.0" in metrics
    assert f'mega_model_load_failures_total{{version="{broken}"}} 1.0' in metrics
    # Moving the alias back to a good version clears the error.
    registry_copy.set_alias("production", "1")
    wait_for(lambda: ready(server)["load_error"] is None)
    assert "mega_model_load_failing 0.0" in httpx.get(f"{server.url}/metrics", timeout=5).text


def test_streamed_body_is_cut_off_at_the_limit(live_api: RunningApi) -> None:
    """A 50 MB chunked upload is answered 413 long before it has all been sent."""
    port = int(live_api.url.rsplit(":", 1)[1])
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"0" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    reply = b""
    preamble = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + f"{len(preamble):x}\r\n".encode() + preamble + b"\r\n")
        sock.settimeout(0.001)
        try:
            while sent < 50 * 1024 * 1024 and not reply:
                sock.sendall(framed)
                sent += len(chunk)
                with contextlib.suppress(TimeoutError):
                    reply = sock.recv(4096)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(10)
        while b"\r\n\r\n" not in reply:
            more = sock.recv(4096)
            if not more:
                break
            reply += more
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 40 * 1024 * 1024, f"sent {sent:,} bytes before the 413"


def test_declared_50mb_body_is_refused_before_reading(live_api: RunningApi) -> None:
    port = int(live_api.url.rsplit(":", 1)[1])
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        reply = b""
        while more := sock.recv(4096):  # the server closes after its answer
            reply += more
    assert reply.startswith(b"HTTP/1.1 413")
    assert b'"code": "too_large"' in reply or b'"code":"too_large"' in reply


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(live_api: RunningApi, tmp_path: Path) -> None:
    """Generated requests for every operation in the OpenAPI schema never get a 5xx."""
    result = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            f"{live_api.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--phases",
            "examples,coverage,fuzzing",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    # Every operation (both predict routes included) was generated for, none skipped.
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    assert selected and tested, output[-2000:]
    assert int(tested[1]) == int(selected[1]) == int(selected[2]) >= 5, output[-2000:]
