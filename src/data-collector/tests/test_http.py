"""The manifest source over HTTP: faults, retries, limits, the failure threshold, re-runs."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fault_server import FaultServer, Route, png
from PIL import Image
from support import write_params
from tenacity import RetryCallState, Retrying

from collector.base import ItemRejectedError
from collector.collect import CollectOptions, collect_source
from collector.fetch import (
    MAX_RETRY_AFTER,
    USER_AGENT,
    Fetcher,
    FetchOptions,
    TransientHTTPError,
    parse_retry_after,
    retry_wait,
)
from collector.sources import ManifestSource
from common.contracts import read_manifest

pytestmark = pytest.mark.integration

FAST = FetchOptions(concurrency=8, timeout=0.5, retries=2, backoff=0.01, max_bytes=4000)


def write_manifest(path: Path, rows: list[tuple[str, str]], fmt: str = "jsonl") -> str:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"url": u, "label": lab}) + "\n" for u, lab in rows))
    else:
        path.write_text("url,label\n" + "".join(f"{u},{lab}\n" for u, lab in rows))
    return str(path)


def good_routes(server: FaultServer, count: int, start: int = 0) -> list[tuple[str, str]]:
    return [
        (server.add(f"/ok/{i}.png", Route(body=png(i))), "even" if i % 2 == 0 else "odd")
        for i in range(start, start + count)
    ]


def big_noise_png() -> bytes:
    return png(999, size=64)  # noise does not compress: about 4 KB


def bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (1200, 1200)).save(buffer, format="PNG")  # 1.4 Mpx in 2 KB
    return buffer.getvalue()


def test_every_fault_ends_in_the_right_outcome(http_server: FaultServer, tmp_path: Path) -> None:
    server = http_server
    good = good_routes(server, 4)
    whole = png(100)
    faults = {
        "flaky": server.add("/flaky.png", Route(body=png(101), fail_times=1, fail_status=500)),
        "busy": server.add(
            "/busy.png", Route(body=png(102), fail_times=1, fail_status=429, retry_after="1")
        ),
        "missing": server.url + "/missing.png",
        "down": server.add("/down.png", Route(fail_times=99, fail_status=503)),
        "slow": server.add("/slow.png", Route(body=png(103), delay=1.0)),
        "truncated": server.add("/truncated.png", Route(body=whole[: len(whole) // 2])),
        "text": server.add("/text.png", Route(body=b"<html>sorry</html>")),
        "empty": server.add("/empty.png", Route(body=b"")),
        "big": server.add("/big.png", Route(body=big_noise_png())),
        "bomb": server.add("/bomb.png", Route(body=bomb_png())),
    }
    rows = good + [(url, "x") for url in faults.values()]
    source = ManifestSource(name="manifest", uri=write_manifest(tmp_path / "m.jsonl", rows))
    result = collect_source(
        source, str(tmp_path / "raw"), CollectOptions(fetch=FAST, max_pixels=1_000_000)
    )

    reasons = {f.item: f.reason for f in result.failed}
    kept = {item.source for item in result.items}
    # Retried and kept.
    assert {faults["flaky"], faults["busy"]} <= kept
    assert server.hits["/flaky.png"] == 2 and server.hits["/busy.png"] == 2
    first, second = server.hit_times["/busy.png"]
    assert second - first >= 0.95, "Retry-After: 1 was not honoured"
    # Rejected with their reasons; a client error is not retried, a server error is.
    assert reasons[faults["missing"]].startswith("HTTP 404")
    assert server.hits["/missing.png"] == 1
    assert (
        reasons[faults["down"]].startswith("HTTP 503")
        and "after 3 attempts" in reasons[faults["down"]]
    )
    assert server.hits["/down.png"] == 3
    assert reasons[faults["slow"]].startswith("timed out")
    assert server.hits["/slow.png"] == 3
    assert "truncated" in reasons[faults["truncated"]]
    assert reasons[faults["text"]] == "not an image (PNG, JPEG, GIF, BMP, TIFF or WebP)"
    assert reasons[faults["empty"]] == "empty file"
    assert reasons[faults["big"]].startswith("over the byte limit")
    assert "pixel limit" in reasons[faults["bomb"]]
    assert len(result.items) == 6 and len(result.failed) == 8
    # Everything kept is on disk under its hash, and the report holds every failure.
    for item in result.items:
        data = (tmp_path / "raw" / item.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item.sha256
    report = json.loads((tmp_path / "raw/collect_report.json").read_text())
    assert {f["item"] for f in report["failed"]} == set(reasons)


def test_redirects_are_followed_and_every_request_names_the_collector(
    http_server: FaultServer, tmp_path: Path
) -> None:
    target = http_server.add("/moved/here.png", Route(body=png(7)))
    moved = http_server.add("/old.png", Route(status=302, headers={"Location": "/moved/here.png"}))
    loop = http_server.add("/loop.png", Route(status=302, headers={"Location": "/loop.png"}))
    rows = [(moved, "a"), (loop, "a")]
    source = ManifestSource(name="manifest", uri=write_manifest(tmp_path / "m.jsonl", rows))
    result = collect_source(source, str(tmp_path / "raw"), CollectOptions(fetch=FAST))
    [item] = result.items
    assert item.source == moved and item.sha256 == hashlib.sha256(png(7)).hexdigest()
    assert http_server.hits["/moved/here.png"] == 1, target
    [failed] = result.failed
    assert failed.item == loop and failed.reason.startswith("request failed:"), failed.reason
    assert "\n" not in failed.reason
    assert set(http_server.user_agents) == {USER_AGENT}


def test_a_body_without_length_stops_at_the_byte_limit(
    http_server: FaultServer, tmp_path: Path
) -> None:
    # A chunked answer declares no length: the limit is enforced while reading.
    http_server.chunked = True
    big = http_server.add("/big.png", Route(body=big_noise_png()))
    small = http_server.add("/small.png", Route(body=png(5)))
    rows = [(big, "a"), (small, "a")]
    source = ManifestSource(name="manifest", uri=write_manifest(tmp_path / "m.jsonl", rows))
    result = collect_source(source, str(tmp_path / "raw"), CollectOptions(fetch=FAST))
    [failed] = result.failed
    assert failed.item == big and failed.reason.startswith("over the byte limit"), failed.reason
    assert [item.source for item in result.items] == [small]


def test_a_compressed_body_is_held_to_the_limit_as_it_expands(http_server: FaultServer) -> None:
    # 100 KB of zeros gzip to about 130 bytes: the declared length is far under the
    # limit, the body it expands to far over it. Reading must stop, not fill memory.
    bomb = gzip.compress(bytes(100_000))
    url = http_server.add("/bomb.png", Route(body=bomb, headers={"Content-Encoding": "gzip"}))

    async def fetch() -> bytes:
        async with Fetcher(FAST) as fetcher:
            return await fetcher.get(url)

    with pytest.raises(ItemRejectedError, match="over the byte limit"):
        asyncio.run(fetch())


def run_collector(cwd: Path, collect: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """`python -m collector --out raw` with params.yaml's `collect:` section `collect`."""
    write_params(cwd, {"collect": collect})
    return subprocess.run(
        [sys.executable, "-m", "collector", "--no-progress", "--out", "raw"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_exit_code_follows_the_failure_threshold(http_server: FaultServer, tmp_path: Path) -> None:
    rows = [*good_routes(http_server, 9), (http_server.url + "/gone.png", "odd")]
    manifest = write_manifest(tmp_path / "m.csv", rows, fmt="csv")
    collect = {"source": "manifest", "uri": manifest, "backoff": 0, "limit": None}

    under = run_collector(tmp_path, {**collect, "max_failure_share": 0.2})
    assert under.returncode == 0, under.stderr
    assert "9 items in raw (9 written" in under.stdout and "1 failed" in under.stdout
    assert "HTTP 404" in under.stdout  # failed by reason, in the summary

    over = run_collector(tmp_path, {**collect, "max_failure_share": 0.05})
    assert over.returncode == 1
    [line] = over.stderr.splitlines()
    assert line.startswith("collect: error: 1 of 10 items failed"), line
    assert str(Path("raw", "collect_report.json")) in line


def test_second_run_downloads_nothing(http_server: FaultServer, tmp_path: Path) -> None:
    rows = good_routes(http_server, 20)
    rows.append((rows[0][0].replace("/ok/0.png", "/ok/0.png?copy"), rows[0][1]))  # same bytes
    source = ManifestSource(name="manifest", uri=write_manifest(tmp_path / "m.jsonl", rows))
    first = collect_source(source, str(tmp_path / "raw"), CollectOptions(fetch=FAST))
    assert first.written == 20 and first.duplicates == 1
    manifest = (tmp_path / "raw/manifest.jsonl").read_bytes()

    http_server.reset_hits()
    again = collect_source(source, str(tmp_path / "raw"), CollectOptions(fetch=FAST))
    assert sum(http_server.hits.values()) == 0
    assert again.requests == 0
    assert (again.written, again.already_present, again.duplicates) == (0, 20, 1)
    assert (tmp_path / "raw/manifest.jsonl").read_bytes() == manifest


@pytest.mark.slow
def test_kill_and_resume(tmp_path: Path) -> None:
    count = 120
    server_port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("fault_server.py")),
            "--port",
            str(server_port),
            "--images",
            str(count),
            "--latency",
            "0.05",
        ]
    )
    try:
        base = f"http://127.0.0.1:{server_port}"
        _wait_for(base + "/ready")
        rows = [(f"{base}/img/{i}.png", f"c{i % 3}") for i in range(count)]
        manifest = write_manifest(tmp_path / "m.jsonl", rows)
        collect = {"source": "manifest", "uri": manifest, "concurrency": 4, "limit": None}
        write_params(tmp_path, {"collect": collect})
        args = [sys.executable, "-m", "collector", "--no-progress", "--out", "raw"]
        run = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        images = tmp_path / "raw/images"
        deadline = time.monotonic() + 30
        while len(_finals(images)) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        before = _finals(images)
        assert 20 <= len(before) < count, "kill the run midway"
        assert not (tmp_path / "raw/manifest.jsonl").exists()
        for path in before:  # every file under its final name is whole
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
        journal = (tmp_path / "raw/.collect_journal.jsonl").read_text().splitlines()
        journaled = {json.loads(line)["key"] for line in journal if line.endswith("}")}
        assert len(journaled) >= len(before) - 4  # only writes in flight may be unrecorded
        hits_before = httpx.get(base + "/hits").json()

        resumed = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert resumed.returncode == 0, resumed.stderr
        items = read_manifest(str(tmp_path / "raw/manifest.jsonl"))
        assert len(items) == count
        assert {item.source for item in items} == {url for url, _ in rows}
        assert len(_finals(images)) == count
        leftovers = [p for p in images.rglob("*") if p.is_file() and p.name.startswith(".")]
        assert leftovers == []
        # What was recorded before the kill was not downloaded again; the rest was.
        hits_after = httpx.get(base + "/hits").json()
        for url, _ in rows:
            path = url[len(base) :]
            again = hits_after.get(path, 0) - hits_before.get(path, 0)
            assert again == (0 if url in journaled else 1), url
    finally:
        server.terminate()
        server.wait(timeout=10)


def _finals(images: Path) -> list[Path]:
    return [p for p in images.rglob("*.png") if not p.name.startswith(".")]


def _free_port() -> int:
    from support import free_port

    return free_port()


def _wait_for(url: str) -> None:
    from support import wait_for_http

    wait_for_http(url, timeout=20)


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_retry_wait_follows_retry_after_up_to_a_cap_else_backs_off() -> None:
    # One wait policy for the fetcher and the archive stream (collector.fetch.retry_policy).
    def state_after(exc: BaseException) -> RetryCallState:
        state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
        state.set_exception((type(exc), exc, None))
        return state

    assert retry_wait(0.01, state_after(TransientHTTPError(429, "", 2.0))) == 2.0
    assert retry_wait(0.01, state_after(TransientHTTPError(503, "", 3600.0))) == MAX_RETRY_AFTER
    assert 0 <= retry_wait(0.01, state_after(TransientHTTPError(503, "", None))) <= 0.02
    assert 0 <= retry_wait(0.01, state_after(httpx.ConnectError("refused"))) <= 0.02


def test_a_duplicate_is_journaled_only_once_its_twins_file_is_in_place(
    http_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collector import collect as engine
    from common import storage

    body = png(11, size=200)  # noise: over INLINE_BYTES, so written in a thread
    assert len(body) > engine.INLINE_BYTES
    rows = [(http_server.add(f"/twin{i}.png", Route(body=body)), "a") for i in range(2)]
    write = storage.write_bytes

    def slow_write(uri: str, data: bytes, durable: bool = True) -> None:
        time.sleep(0.3)
        write(uri, data, durable)

    def sync(files: list[str]) -> None:
        missing = [f for f in files if not Path(f).exists()]
        assert not missing, f"asked to sync (and journal) files not yet written: {missing}"

    monkeypatch.setattr(storage, "write_bytes", slow_write)
    monkeypatch.setattr(storage, "sync_files", sync)
    source = ManifestSource(name="manifest", uri=write_manifest(tmp_path / "m.jsonl", rows))
    options = CollectOptions(fetch=FetchOptions(concurrency=4, max_bytes=1 << 20))
    result = collect_source(source, str(tmp_path / "raw"), options)
    assert (result.written, result.duplicates, result.failed) == (1, 1, [])


def test_a_duplicate_of_a_failed_write_is_never_journaled(
    http_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collector import collect as engine
    from collector.journal import JOURNAL
    from common import storage

    body = png(12, size=200)  # over INLINE_BYTES: written in a thread
    assert len(body) > engine.INLINE_BYTES
    rows = [(http_server.add(f"/twin{i}.png", Route(body=body)), "a") for i in range(2)]

    def failing_write(uri: str, data: bytes, durable: bool = True) -> None:
        time.sleep(0.3)  # long enough for the twin to wait on this write
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "write_bytes", failing_write)
    # A sync that does not look for the file: only the engine's own order protects it.
    monkeypatch.setattr(storage, "sync_files", lambda files: None)
    source = ManifestSource(name="manifest", uri=write_manifest(tmp_path / "m.jsonl", rows))
    options = CollectOptions(fetch=FetchOptions(concurrency=4, max_bytes=1 << 20))
    with pytest.raises(OSError, match="No space left"):
        collect_source(source, str(tmp_path / "raw"), options)
    journal = tmp_path / "raw" / JOURNAL
    recorded = journal.read_text() if journal.exists() else ""
    assert "twin" not in recorded, f"journaled an item whose file was never written: {recorded}"
