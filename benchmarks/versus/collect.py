"""Collecting images over HTTP: our collector vs img2dataset, at equal concurrency.

Both sides download the same N distinct 32x32 PNGs (about 1.1 KB each) from one
loopback server into an empty folder, 32 requests in flight: ours with
`concurrency: 32` (`collect_ours.py`), img2dataset with 2 processes x 16 threads
(`peer_side/img2dataset_collect.py`; 1 x 32 is bound by one interpreter's lock),
`files` output, no resizing, no re-encoding. The server is `image_server.py` (asyncio
on uvloop, its own process, every answer 20 ms after its request): the tests'
`fault_server.py`, a thread per connection, would cap the rate itself on 2 cores.

Each side runs as its own process while this one counts the images stored (files
under their final names) every 50 ms, giving:

- steady state: images/s between the polls where 10 % and 90 % of the images were
  stored (start-up and the tail excluded);
- start-up: process start to the first image stored (imports, reading the URL
  list, img2dataset's sharding and worker processes; the first request's 20 ms).

What ours does that img2dataset (so configured) does not: decode and check every
image with Pillow, dedup by content hash, write each file through a temporary name
and a rename, sync them in batches and journal each item for resumes. img2dataset
writes a `.json` per image and a parquet per shard, and hashes each image (SHA-256,
its default). The latency bound is concurrency / latency = 1,600 images/s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from versus.common import alternate, announce, ratio_line, target_note, unavailable_line
from versus.env import PEER_SIDE, PeerUnavailableError, peer_python

HERE = Path(__file__).resolve().parent
CONCURRENCY = 32
LATENCY = 0.02
SIZES = (10_000, 2_000)
PEER_SPLIT = (2, 16)  # img2dataset's processes x threads = CONCURRENCY
POLL_SECONDS = 0.05
IMAGE_SUFFIXES = (".png", ".jpg")
# albumentations (imported by img2dataset) otherwise asks the network for a newer
# version in every process, which without internet costs seconds of time-outs.
PEER_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1"}


@dataclass(frozen=True)
class Run:
    """One run of one side: images/s between 10 % and 90 % stored; seconds to the first."""

    steady: float
    startup: float


def count_images(folder: Path) -> int:
    """Image files under `folder` at any depth; temporaries (`.name…`) not counted."""
    total = 0
    for _, _, names in os.walk(folder):
        total += sum(1 for n in names if n.endswith(IMAGE_SUFFIXES) and not n.startswith("."))
    return total


def watch(command: list[str], folder: Path, total: int, env: dict[str, str]) -> Run:
    """Run `command` to its end while polling `folder`; RuntimeError if it fails."""
    samples: list[tuple[float, int]] = []
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **env}
    )
    while process.poll() is None:
        samples.append((time.perf_counter() - started, count_images(folder)))
        time.sleep(POLL_SECONDS)
    samples.append((time.perf_counter() - started, count_images(folder)))
    _, err = process.communicate()
    if process.returncode != 0 or samples[-1][1] < total:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        name = Path(command[-3] if command[1] == "-P" else command[1]).name
        raise RuntimeError(f"{name}: {samples[-1][1]}/{total} stored; {tail[0]}")
    return Run(steady=steady_rate(samples, total), startup=reached(samples, 1)[0])


def reached(samples: list[tuple[float, int]], count: float) -> tuple[float, int]:
    """The first (seconds, images) poll with at least `count` images."""
    return next(sample for sample in samples if sample[1] >= count)


def steady_rate(samples: list[tuple[float, int]], total: int) -> float:
    """Images/s between the polls where 10 % and 90 % of `total` were stored."""
    t10, n10 = reached(samples, 0.1 * total)
    t90, n90 = reached(samples, 0.9 * total)
    return (n90 - n10) / (t90 - t10)


@contextlib.contextmanager
def image_server(images: int) -> Iterator[str]:
    """The loopback image server in its own process; yields its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, str(HERE / "image_server.py"), "--port", str(port)]
    server = subprocess.Popen([*command, "--images", str(images), "--latency", str(LATENCY)])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/ready", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the image server did not come up") from None
                time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


def sides(
    peer: Path, base: str, count: int, work: Path
) -> tuple[dict[str, Callable[[], float]], dict[str, list[Run]]]:
    """Each side's run over `count` URLs (returning its steady rate) and their records.

    Every run writes into a fresh folder under `work`; `runs` collects the full results.
    Each run prints a progress line to stderr when it ends.
    """
    urls = [f"{base}/img/{i}.png" for i in range(count)]
    manifest, url_list = work / "manifest.jsonl", work / "urls.txt"
    manifest.write_text(
        "".join(json.dumps({"url": u, "label": str(i % 10)}) + "\n" for i, u in enumerate(urls))
    )
    url_list.write_text("\n".join(urls) + "\n")
    runs: dict[str, list[Run]] = {"ours": [], "img2dataset": []}

    def record(name: str, command: list[str], env: dict[str, str]) -> float:
        run = watch(command, work / f"{name}-{len(runs[name])}", count, env)
        runs[name].append(run)
        print(
            f"    {name}: {run.steady:,.0f} images/s steady, first image after {run.startup:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        return run.steady

    def ours() -> float:
        out = work / f"ours-{len(runs['ours'])}"
        # -P: not its own folder first on sys.path, where versus/common.py would shadow
        # the project's `common` package.
        command = [sys.executable, "-P", str(HERE / "collect_ours.py"), str(manifest), str(out)]
        return record("ours", command, {})

    def img2dataset() -> float:
        out = work / f"img2dataset-{len(runs['img2dataset'])}"
        processes, threads = PEER_SPLIT
        command = [str(peer), str(PEER_SIDE / "img2dataset_collect.py"), str(url_list), str(out)]
        command += ["--processes", str(processes), "--threads", str(threads)]
        return record("img2dataset", command, PEER_ENV)

    return {"ours": ours, "img2dataset": img2dataset}, runs


@contextlib.contextmanager
def scratch_folder(count: int) -> Iterator[Path]:
    """A temporary folder for the runs over `count` URLs, removed after them with a
    progress line (stderr) saying how many files went and how long it took.

    Removal is untimed but not free: every run leaves `count` images (img2dataset a
    `.json` beside each too), and on a disk mounted with `discard` each deleted file is
    a discard request that the removal waits for: on a 2-core VM with ext4 so mounted,
    20,000 files took 20,126 discards, 0.7 s of a 1.1 s `rmtree`. A device that
    takes 2 ms per discard turns three rounds at 10,000 URLs (90,000 files) into minutes.
    """
    folder = Path(tempfile.mkdtemp(prefix="versus-collect-"))
    try:
        yield folder
    finally:
        files = sum(len(names) for _, _, names in os.walk(folder))
        print(f"  removing the {count:,}-URL runs' {files:,} files", file=sys.stderr, flush=True)
        started = time.perf_counter()
        shutil.rmtree(folder, ignore_errors=True)
        print(f"  removed in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def startup_line(startups: dict[str, list[float]]) -> str:
    """`collect_startup_s`: each side's median seconds to its first image, ours' target."""
    ours = statistics.median(startups["ours"])
    return (
        f"collect_startup_s: ours {ours:.1f} vs img2dataset "
        f"{statistics.median(startups['img2dataset']):.1f} (process start to first image "
        f"stored, median of {len(startups['ours'])} runs each)"
        f"{target_note('collect_startup_s', ours, digits=1)}"
    )


def compare(rounds: int) -> list[str]:
    """`collect_steady_<N>` for each size, the latency-bound share, and start-up times."""
    try:
        peer = peer_python("img2dataset")
    except PeerUnavailableError as exc:
        return [unavailable_line("collect", f"img2dataset: {exc}")]
    lines: list[str] = []
    startups: dict[str, list[float]] = {"ours": [], "img2dataset": []}
    with image_server(max(SIZES)) as base:
        for count in SIZES:
            with scratch_folder(count) as work:
                runners, runs = sides(peer, base, count, work)
                rates = alternate(runners, rounds, announce(f"{count:,} URLs", rounds))
            name = f"collect_steady_{count}"
            lines.append(ratio_line(name, rates["ours"], rates["img2dataset"], "img2dataset"))
            for side, side_runs in runs.items():
                startups[side] += [run.startup for run in side_runs]
            if count == max(SIZES):
                bound = [CONCURRENCY / LATENCY] * rounds
                name = "collect_vs_latency_bound"
                lines.append(ratio_line(name, rates["ours"], bound, "bound", share=True))
    lines.append(startup_line(startups))
    return lines
