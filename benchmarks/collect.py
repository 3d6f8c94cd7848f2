"""Collecting over HTTP: the collector's async downloads vs a sequential `httpx.get` loop.

A loopback server (in its own process, so it does not share our interpreter) serves
500 distinct 32x32 PNGs and adds 20 ms of latency to every request, like a remote
file server. Ours collects them from a manifest with the default settings
(validation, hashing and atomic writes included); the baseline only downloads them
one after another. Prints `collect: <ratio>x (ours X/s vs baseline Y/s)`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from collector.collect import CollectOptions, collect_source
from collector.sources import ManifestSource
from common.params import CollectParams

ROOT = Path(__file__).resolve().parent.parent
IMAGES = 500
LATENCY = 0.02


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up")


def baseline(urls: list[str]) -> float:
    started = time.perf_counter()
    for url in urls:
        response = httpx.get(url, timeout=30)
        response.raise_for_status()
        assert response.content
    return len(urls) / (time.perf_counter() - started)


def ours(urls: list[str], work: Path) -> float:
    manifest = work / "manifest.jsonl"
    manifest.write_text(
        "".join(json.dumps({"url": u, "label": str(i % 10)}) + "\n" for i, u in enumerate(urls))
    )
    options = CollectOptions.from_params(CollectParams())
    source = ManifestSource(name="manifest", uri=str(manifest))
    started = time.perf_counter()
    result = collect_source(source, str(work / "raw"), options)
    elapsed = time.perf_counter() - started
    assert result.written == len(urls) and not result.failed, result.failed[:3]
    return len(urls) / elapsed


def main() -> None:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "src/data-collector/tests/fault_server.py"),
            "--port",
            str(port),
            "--images",
            str(IMAGES),
            "--latency",
            str(LATENCY),
        ]
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base + "/ready")
        urls = [f"{base}/img/{i}.png" for i in range(IMAGES)]
        slow = baseline(urls)
        with tempfile.TemporaryDirectory() as tmp:
            fast = ours(urls, Path(tmp))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"collect: {fast / slow:.1f}x (ours {fast:,.0f}/s vs baseline {slow:,.0f}/s)")


if __name__ == "__main__":
    main()
