"""Decoding and inference in a child process, so the event loop keeps its GIL to itself.

Decoding a small upload and running the model release the GIL a dozen times per
image. In one process, each time the batcher thread wants it back it waits for the
busy event loop to hand it over (up to the interpreter's switch interval), so under
load the service ran on one core while the other sat idle. The child has its own
interpreter and GIL: the server's batcher thread only sends a batch of raw uploads
and waits, without the GIL, for probabilities.

The child is `python -m api_service.worker FD`, talking over one end of a socket
pair with `multiprocessing.connection` framing. It imports no web framework. A
decoder crash on a crafted image kills the child, not the server: the batch in
flight fails with 500s and the next batch starts a new child.

What the child writes to stderr (LiteRT's "INFO: Created TensorFlow Lite XNNPACK
delegate for CPU." at every load, a traceback if it dies) reaches the server's log as
records of the `api_service.worker` logger, one per line, so the log stays JSON lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import numpy as np

from api_service.inputs import InputError, prepare
from api_service.model import Engine, ServedModel
from common.contracts import Preprocess

READY_TIMEOUT_S = 60.0
# A batch that takes longer is taken for a hung decoder: the process is replaced.
BATCH_TIMEOUT_S = 60.0
PROTOCOL = pickle.HIGHEST_PROTOCOL

log = logging.getLogger("api_service.worker")


class WorkerError(RuntimeError):
    """The inference process could not load the model, or it died."""


BatchResult = tuple[list[np.ndarray | InputError], float, float]


class InferenceWorker:
    """The server's handle on one inference process for one model version."""

    def __init__(self, model: ServedModel, *, threads: int, max_batch: int, max_pixels: int):
        self.version = model.version
        self._config = {
            "tflite": str(model.tflite),
            "spec": model.spec.model_dump(),
            "classes": len(model.labels),
            "threads": threads,
            "max_batch": max_batch,
            "max_pixels": max_pixels,
        }
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._closed = False
        self._busy_since: float | None = None

    def start(self) -> None:
        """Start the process; return once its model is loaded and warm (else WorkerError)."""
        ours, theirs = socket.socketpair()
        with ours, theirs:
            process = subprocess.Popen(
                [sys.executable, "-m", "api_service.worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stderr=subprocess.PIPE,
            )
            conn = Connection(ours.detach())
        assert process.stderr is not None
        threading.Thread(
            target=_forward_stderr,
            args=(process.stderr, self.version),
            name=f"{self.version}-stderr",
            daemon=True,
        ).start()
        try:
            conn.send(self._config)
            if not conn.poll(READY_TIMEOUT_S):
                raise WorkerError(f"the inference process was not ready in {READY_TIMEOUT_S:.0f} s")
            status, detail = conn.recv()
            if status != "ready":
                raise WorkerError(detail)
        except BaseException as exc:
            _end(process)
            conn.close()
            if isinstance(exc, (EOFError, OSError)):
                raise WorkerError(
                    f"the inference process exited with {process.returncode} while loading"
                ) from exc
            raise
        self._process, self._conn = process, conn
        threading.Thread(
            target=self._watch, args=(process,), name=f"{self.version}-watchdog", daemon=True
        ).start()

    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        """Kill `process` if a batch runs past BATCH_TIMEOUT_S (a hung decoder): the
        waiting `run` then fails that batch, and the next batch starts a new process.
        A timer thread rather than a timeout on every read keeps the hot path lean."""
        while process.poll() is None:
            time.sleep(1.0)
            started = self._busy_since
            if started is not None and time.monotonic() - started > BATCH_TIMEOUT_S:
                process.kill()

    def run(self, images: list[bytes]) -> BatchResult:
        """Per image its probabilities or the InputError that refused it; decode and
        inference seconds. One batch at a time, from one thread."""
        if self._conn is None:
            if self._closed:
                raise WorkerError("the inference process was stopped")
            self.start()
        assert self._conn is not None and self._process is not None
        self._busy_since = time.monotonic()
        try:
            self._conn.send_bytes(pickle.dumps(images, protocol=PROTOCOL))
            reply = pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError) as exc:
            _end(self._process)
            code = self._process.returncode
            self._forget()
            raise WorkerError(f"the inference process died (exit code {code})") from exc
        finally:
            self._busy_since = None
        if reply[0] != "ok":
            raise WorkerError(reply[1])
        _, rows, probabilities, decode_s, infer_s = reply
        results = [
            InputError(*row) if isinstance(row, tuple) else probabilities[row] for row in rows
        ]
        return results, decode_s, infer_s

    def close(self) -> None:
        """Ask the process to exit and wait for it (killed after a few seconds).

        Only from the thread that runs batches; any other thread uses `kill`.
        """
        self._closed = True
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send_bytes(b"")
        if self._process is not None:
            _end(self._process, grace=5.0)
        self._forget()

    def kill(self) -> None:
        """Stop the process now, from any thread; no new one is started after this."""
        self._closed = True
        process = self._process
        if process is not None:
            process.kill()

    def _forget(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._process = None


def stderr_level(line: str) -> int:
    """The log level of a line the inference process wrote: INFO for LiteRT's "INFO: …"
    lines, WARNING for anything else (its warnings, a Python traceback)."""
    return logging.INFO if line.startswith("INFO:") else logging.WARNING


def _forward_stderr(stream: IO[bytes], version: str) -> None:
    """Log each line of the inference process's stderr until it closes (the process
    ended). Reads to the end whatever happens: a child blocked on a full pipe would
    hang its batch."""
    with stream:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if line:
                with contextlib.suppress(Exception):
                    log.log(stderr_level(line), "%s", line, extra={"model_version": version})


def _end(process: subprocess.Popen[bytes], grace: float = 0.0) -> None:
    """Wait `grace` seconds for the process to exit, then kill it and reap it."""
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- the child ----------------------------------------------------------------------------


def _exit_with_parent(parent: int) -> None:
    """End this process once its parent is gone, even if a decode never returns."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _handle(engine: Engine, images: list[bytes], spec: Preprocess, max_pixels: int) -> tuple:
    started = time.perf_counter()
    rows: list[int | tuple[int, str, str]] = []
    pixels: list[np.ndarray] = []
    for data in images:
        try:
            pixels.append(prepare(data, spec, max_pixels))
            rows.append(len(pixels) - 1)
        except InputError as exc:
            rows.append((exc.status, exc.code, exc.message))
    decoded = time.perf_counter()
    probabilities = engine.predict_batch(np.stack(pixels)) if pixels else None
    return ("ok", rows, probabilities, decoded - started, time.perf_counter() - decoded)


def serve(conn: Connection) -> None:
    """Load the engine the first message describes, then answer batches until told to stop."""
    config: dict[str, Any] = conn.recv()
    spec = Preprocess.model_validate(config["spec"])
    try:
        engine = Engine(Path(config["tflite"]), spec.shape, config["threads"], config["max_batch"])
        engine.warm_up(config["classes"])
    except Exception as exc:  # reported to the server, which keeps its current model
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while message := conn.recv_bytes():
        try:
            reply = _handle(engine, pickle.loads(message), spec, config["max_pixels"])
        except Exception as exc:  # this batch fails; the process serves the next one
            reply = ("failed", f"{type(exc).__name__}: {exc}")
        conn.send_bytes(pickle.dumps(reply, protocol=PROTOCOL))


if __name__ == "__main__":
    # Ctrl-C or a supervisor's SIGTERM reaches the whole process group; the server
    # drains its requests first and then closes this process's connection.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    connection = Connection(int(sys.argv[1]))
    with contextlib.suppress(EOFError):  # the server went away
        serve(connection)
