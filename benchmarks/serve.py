"""Serving under load: our API vs the naive Keras service vs an upload-only ceiling.

Three servers run in turn on loopback, each on the same model and the same image:

- ours: `python -m api_service` (LiteRT in its inference process, micro-batching,
  every check, metric and access log on);
- naive: FastAPI `async def` that decodes the upload and calls Keras `model.predict`
  once per request (the usual course API service);
- ceiling: the same FastAPI upload endpoint that reads the file and returns a constant.

One load-generator process drives each with 32 concurrent keep-alive clients for 20 s
(after a short warm-up). While ours is saturated, a second client process probes
`/healthz`. Prints `serve_throughput`, `serve_vs_ceiling`, `healthz_p99_ms`,
`cold_start_s` and `rss_growth`. Needs a registered model: run `make run` first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# At module level: FastAPI resolves the endpoints' (string) annotations from here.
from fastapi import FastAPI, File, UploadFile

from api_service.settings import get_settings
from common.registry import ModelRegistry, RegistryError

REPO = Path(__file__).resolve().parent.parent
CLIENTS = 32
SECONDS = 20.0
WARMUP = 2.0
BOUNDARY = "megabenchboundary"


# --- servers ---------------------------------------------------------------------------


def naive_app(model_dir: Path) -> Any:
    """The baseline: Keras predict in an `async def`, once per request."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from common import storage
    from common.contracts import Preprocess, read_labels
    from common.images import decode_image, to_model_pixels

    model = keras.saving.load_model(model_dir / "model.keras")
    labels = read_labels(model_dir / "labels.json")
    spec = Preprocess.model_validate(storage.read_json(model_dir / "preprocess.json"))
    app = FastAPI()

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/predict")
    async def predict(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        pixels = to_model_pixels(decode_image(await file.read()), spec)
        probabilities = model.predict(pixels[None].astype("float32"), verbose=0)[0]
        best = int(probabilities.argmax())
        return {
            "label": labels[best],
            "confidence": float(probabilities[best]),
            "probabilities": {k: float(p) for k, p in zip(labels, probabilities, strict=True)},
        }

    return app


def ceiling_app() -> Any:
    """The ceiling: the same upload endpoint with no decode and no inference."""
    app = FastAPI()
    answer = {"label": "0", "confidence": 1.0, "probabilities": {"0": 1.0}}

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/predict")
    async def predict(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        await file.read()
        return answer

    return app


def serve_baseline(kind: str, port: int, model_dir: Path) -> None:
    import uvicorn

    app = naive_app(model_dir) if kind == "naive" else ceiling_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- load generator and probe (each its own process) -----------------------------------


def request_bytes(port: int, path: str, image: bytes | None) -> bytes:
    if image is None:
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="digit.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def one_client(
    port: int,
    payload: bytes,
    until: float,
    measure_from: float,
    out: dict[str, Any],
    pause: float = 0.0,
) -> None:
    """Send `payload` back to back on a keep-alive connection, recording latencies."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (start := time.perf_counter()) < until:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            await reader.readexactly(length)
            done = time.perf_counter()
            if start >= measure_from:
                out["latencies"].append(done - start)
                out["ok" if status == 200 else "failed"] += 1
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if pause:
                await asyncio.sleep(pause)
    finally:
        writer.close()


async def drive(port: int, path: str, image: bytes | None, clients: int, seconds: float) -> dict:
    payload = request_bytes(port, path, image)
    measure_from = time.perf_counter() + WARMUP
    until = measure_from + seconds
    out: dict[str, Any] = {"latencies": [], "ok": 0, "failed": 0}
    # The health probe is a sparse observer (50/s), not extra load.
    pause = 0.02 if image is None else 0.0
    results = await asyncio.gather(
        *(one_client(port, payload, until, measure_from, out, pause) for _ in range(clients)),
        return_exceptions=True,
    )
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    latencies = sorted(out["latencies"])
    return {
        "ok": out["ok"],
        "failed": out["failed"] + len(errors),
        "errors": errors[:3],
        "rate": out["ok"] / seconds,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
    }


def run_client(args: argparse.Namespace) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    image = Path(args.image).read_bytes() if args.image else None
    clients = 1 if args.path == "/healthz" else args.clients
    result = asyncio.run(drive(args.port, args.path, image, clients, args.seconds))
    print(json.dumps(result))


# --- orchestration ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until GET /readyz answers 200."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(f"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"server on {port} not ready after {timeout}s")


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its children (ours runs inference in a child)."""
    total = 0
    # Every thread's children: ours starts its inference process from a worker thread,
    # and /proc/PID/task/PID/children lists only the main thread's.
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            total += rss_bytes(int(child))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return total + int(line.split()[1]) * 1024
    return total


def client_process(port: int, path: str, image: Path | None, seconds: float) -> subprocess.Popen:
    """Start the load generator (this file with --client) against `port`; JSON on stdout."""
    args = [sys.executable, __file__, "--client", "--port", str(port), "--path", path]
    args += ["--seconds", str(seconds), "--clients", str(CLIENTS)]
    if image is not None:
        args += ["--image", str(image)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def result_of(process: subprocess.Popen, seconds: float = SECONDS) -> dict:
    out, _ = process.communicate(timeout=seconds + 120)
    if process.returncode != 0:
        raise RuntimeError(f"load generator failed ({process.returncode})")
    result: dict = json.loads(out.strip().splitlines()[-1])
    return result


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, as a supervisor would; SIGKILL it after 20 s.

    The group, not the process: a server that forks workers (uvicorn --workers,
    LitServe, BentoML) may leave them running when only its first process ends.
    """
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        time.sleep(0.5)  # the workers' own shutdown, after their parent's
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def bench_server(
    name: str,
    command: list[str],
    env: dict[str, str],
    image: Path,
    *,
    seconds: float = SECONDS,
    probe_health: bool | None = None,
    log: Path | None = None,
) -> dict:
    """Start `command --port PORT`, wait for /readyz, load /v1/predict with CLIENTS
    clients for `seconds`, stop the server (SIGTERM). Returns the load generator's
    figures (`rate` in req/s, `p50_ms`, `p99_ms`, `ok`, `failed`) plus `cold_start_s`,
    `rss_growth` and, when probed (by default for "ours"), `healthz`. The server's
    output goes to `log` (default: discarded). Raises RuntimeError or TimeoutError
    when the server exits or never becomes ready."""
    port = free_port()
    started = time.monotonic()
    output = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=output,
            stderr=output,
            start_new_session=True,  # its own process group: `stop` ends all of it
        )
    finally:
        if log is not None:
            output.close()  # type: ignore[union-attr]
    probe_health = name == "ours" if probe_health is None else probe_health
    try:
        wait_ready(port, process)
        cold_start = time.monotonic() - started  # from before the process was started
        time.sleep(0.5)
        idle = rss_bytes(process.pid)
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.25):
                peak.append(rss_bytes(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load = client_process(port, "/v1/predict", image, seconds)
        probe = client_process(port, "/healthz", None, seconds - 2) if probe_health else None
        result = result_of(load, seconds)
        if probe is not None:
            result["healthz"] = result_of(probe, seconds)
        done.set()
        sampler.join()
        # Memory of the whole process tree: ours runs its model in a child process.
        result.update(cold_start_s=cold_start, rss_growth=max(peak) / idle)
        print(
            f"  {name}: {result['rate']:,.0f} req/s, p50 {result['p50_ms']:.1f} ms, "
            f"p99 {result['p99_ms']:.1f} ms, {result['failed']} failed",
            file=sys.stderr,
        )
        return result
    finally:
        stop(process)


def find_model(registry: ModelRegistry, alias: str) -> tuple[Path, Path]:
    """The version folder the alias names (as ours resolves it), and a digit image."""
    model_dir = Path(registry.version_uri(registry.resolve(alias)))
    images = sorted((REPO / "data/raw/digits/images").glob("3/*"))
    if images:
        return model_dir, images[0]
    from PIL import Image, ImageDraw

    path = Path("/tmp/mega-bench-digit.png")
    canvas = Image.new("L", (32, 32))
    ImageDraw.Draw(canvas).text((10, 8), "3", fill=255)
    canvas.save(path)
    return model_dir, path


def registered_model() -> tuple[Path, Path, dict[str, str]]:
    """The served version's folder, a digit image, and the servers' environment.

    Raises RegistryError when no version holds the serving alias (run `make run`).
    """
    settings = get_settings()
    models_root = REPO / settings.models_root  # an absolute root stays as it is
    registry = ModelRegistry(models_root, settings.model_name)
    model_dir, image = find_model(registry, settings.model_alias)
    env = {**os.environ, "MEGA_MODELS_ROOT": str(models_root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return model_dir, image, env


def ours_command() -> list[str]:
    """Our service as `make serve` runs it, less the page (bench_server adds --port)."""
    return [sys.executable, "-m", "api_service", "--host", "127.0.0.1"]


def baseline_command(kind: str, model_dir: Path) -> list[str]:
    """The naive Keras service or the upload-only ceiling (`kind`), from this file."""
    return [sys.executable, __file__, "--serve", kind, "--model-dir", str(model_dir)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", choices=["naive", "ceiling"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/v1/predict")
    parser.add_argument("--image")
    parser.add_argument("--model-dir")
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    args = parser.parse_args()
    if args.client:
        run_client(args)
        return
    if args.serve:
        serve_baseline(args.serve, args.port, Path(args.model_dir))
        return

    try:
        model_dir, image, env = registered_model()
    except RegistryError as exc:
        sys.exit(f"{exc} (run `make run` first)")
    print(
        f"serving {model_dir} · image {image.name} · {CLIENTS} clients × {SECONDS:.0f} s",
        file=sys.stderr,
    )
    ours = bench_server("ours", ours_command(), env, image)
    naive = bench_server("naive", baseline_command("naive", model_dir), env, image)
    ceiling = bench_server("ceiling", baseline_command("ceiling", model_dir), env, image)
    naive["rate"] = max(naive["rate"], 1e-9)  # a dead baseline must not hide the other lines
    ceiling["rate"] = max(ceiling["rate"], 1e-9)
    print(
        f"serve_throughput: {ours['rate'] / naive['rate']:.1f}x "
        f"(ours {ours['rate']:,.0f}/s p99 {ours['p99_ms']:.1f} ms vs naive "
        f"{naive['rate']:,.0f}/s p99 {naive['p99_ms']:.1f} ms; "
        f"failed {ours['failed']} / {naive['failed']})"
    )
    print(
        f"serve_vs_ceiling: {ours['rate'] / ceiling['rate']:.2f} "
        f"(ours {ours['rate']:,.0f}/s vs ceiling {ceiling['rate']:,.0f}/s "
        f"p99 {ceiling['p99_ms']:.1f} ms)"
    )
    health = ours["healthz"]
    print(
        f"healthz_p99_ms: {health['p99_ms']:.1f} "
        f"({health['ok']} probes from a second process while ours was saturated)"
    )
    print(f"cold_start_s: {ours['cold_start_s']:.2f} (process start to /readyz 200)")
    print(f"rss_growth: {ours['rss_growth']:.2f} (peak RSS under load / idle RSS)")


if __name__ == "__main__":
    main()
