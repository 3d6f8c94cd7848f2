"""Decoding and inference in a child process, so the event loop keeps its GIL to itself.

Decoding a small upload and running the model release the GIL a dozen times per
image. In the server's process, each time that work wanted the GIL back it would
wait for the busy event loop to hand it over (up to the interpreter's switch
interval), and the service ran on one core while the other sat idle. The child has
its own interpreter and GIL: the event loop only sends it a batch of raw uploads and
awaits, without blocking, its probabilities (`InferenceWorker.submit`).

The child is `python -m api_service.worker FD`, talking over one end of a socket
pair: each message a pickle behind its 8-byte length (`FRAME`). It imports no web
framework. A decoder crash on a crafted image kills the child, not the server: the
batch in flight fails with 500s and the next batch starts a new child.

What the child writes to stderr (LiteRT's "INFO: Created TensorFlow Lite XNNPACK
delegate for CPU." at every load, a traceback if it dies) reaches the server's log as
records of the `api_service.worker` logger, one per line, so the log stays JSON lines;
a LiteRT line's level prefix becomes the record's level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Channel:
    """Streams on the inference process's socket, for the event loop that made them."""

    loop: asyncio.AbstractEventLoop
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    process: subprocess.Popen[bytes]
    sock: socket.socket  # the copy of the process's socket the streams own


class InferenceWorker:
    """The server's handle on one inference process for one model version.

    `start` and `close` block (call them from a thread); `submit` (and `run`) are for
    the event loop, one batch at a time.
    """

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
        self._sock: socket.socket | None = None
        self._closed = False
        self._busy_since: float | None = None
        self._channel: _Channel | None = None

    def start(self) -> None:
        """Start the process; return once its model is loaded and warm (else WorkerError)."""
        ours, theirs = socket.socketpair()
        with theirs:
            process = subprocess.Popen(
                [sys.executable, "-m", "api_service.worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stderr=subprocess.PIPE,
            )
        assert process.stderr is not None
        threading.Thread(
            target=_forward_stderr,
            args=(process.stderr, self.version),
            name=f"{self.version}-stderr",
            daemon=True,
        ).start()
        try:
            ours.settimeout(READY_TIMEOUT_S)
            send_message(ours, pickle.dumps(self._config, protocol=PROTOCOL))
            status, detail = pickle.loads(receive_message(ours))
            if status != "ready":
                raise WorkerError(detail)
        except BaseException as exc:
            _end(process)
            ours.close()
            if isinstance(exc, TimeoutError):
                raise WorkerError(
                    f"the inference process was not ready in {READY_TIMEOUT_S:.0f} s"
                ) from exc
            if isinstance(exc, (EOFError, OSError)):
                raise WorkerError(
                    f"the inference process exited with {process.returncode} while loading"
                ) from exc
            raise
        ours.setblocking(False)  # from now on the event loop reads and writes it
        self._process, self._sock = process, ours
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

    async def run(self, images: list[bytes]) -> BatchResult:
        """Per image its probabilities or the InputError that refused it; decode and
        inference seconds (`submit`, awaited)."""
        return await self.submit(images)

    def submit(self, images: list[bytes]) -> Coroutine[Any, Any, BatchResult]:
        """Send a batch now and return the coroutine that awaits its `BatchResult`.
        WorkerError (raised by the coroutine) if the process dies or was stopped first;
        a process that is gone is replaced first, loaded on a thread.

        On the event loop, one batch at a time. Sending at once, not in the coroutine,
        spares the batch a turn of the loop (milliseconds under load) before the
        process gets it. Cancelled mid-batch, the coroutine kills the process (the
        reply would be half-read), and the next batch starts a new one.
        """
        message = _framed(pickle.dumps(images, protocol=PROTOCOL))
        channel = self._channel
        if channel is not None and channel.loop is asyncio.get_running_loop():
            self._busy_since = time.monotonic()
            channel.writer.write(message)  # what the socket does not take now, it buffers
            return self._reply(channel)
        return self._send_and_reply(message)

    async def _send_and_reply(self, message: bytes) -> BatchResult:
        """`submit`'s path when this loop has no channel yet, or there is no process."""
        loop = asyncio.get_running_loop()
        if self._process is not None and self._busy_since is not None:
            # A reply is still owed to a batch of a loop that ended: it would be read
            # as this one's. A new process starts clean.
            self._died(self._process)
        if self._sock is None:
            if self._closed:
                raise WorkerError("the inference process was stopped")
            await loop.run_in_executor(None, self.start)
            if self._closed and self._process is not None:  # stopped while it loaded
                self._died(self._process)
                raise WorkerError("the inference process was stopped")
        channel = await self._attach(loop)
        self._busy_since = time.monotonic()
        channel.writer.write(message)
        return await self._reply(channel)

    async def _attach(self, loop: asyncio.AbstractEventLoop) -> _Channel:
        """This loop's streams on the process's socket (a copy the streams own and close)."""
        assert self._sock is not None and self._process is not None
        self._detach()
        sock = self._sock.dup()
        reader, writer = await asyncio.open_connection(sock=sock)
        self._channel = _Channel(loop, reader, writer, self._process, sock)
        return self._channel

    def _detach(self) -> None:
        """Close the current streams, from any thread."""
        channel, self._channel = self._channel, None
        if channel is None:
            return
        try:
            channel.loop.call_soon_threadsafe(channel.writer.close)
        except RuntimeError:  # the loop is closed: its streams can only drop the socket
            channel.sock.close()

    async def _reply(self, channel: _Channel) -> BatchResult:
        try:
            (size,) = FRAME.unpack(await channel.reader.readexactly(FRAME.size))
            reply = pickle.loads(await channel.reader.readexactly(size))
        except (EOFError, OSError) as exc:  # IncompleteReadError is an EOFError
            raise self._died(channel.process) from exc
        except BaseException:
            self._died(channel.process)
            raise
        finally:
            self._busy_since = None
        if reply[0] != "ok":
            raise WorkerError(reply[1])
        _, rows, probabilities, decode_s, infer_s = reply
        results = [
            InputError(*row) if isinstance(row, tuple) else probabilities[row] for row in rows
        ]
        return results, decode_s, infer_s

    def _died(self, process: subprocess.Popen[bytes]) -> WorkerError:
        """End and forget `process`; the error for the batch it leaves unanswered."""
        _end(process)
        if process is self._process:
            self._forget()
        return WorkerError(f"the inference process died (exit code {process.returncode})")

    def close(self) -> None:
        """Ask the process to exit and wait for it (killed after a few seconds).

        Only while no batch runs (the batcher closes it once drained); any other time,
        from any thread, use `kill`.
        """
        self._closed = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)  # the process reads the end and exits
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
        self._detach()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._process = None
        self._busy_since = None  # the next process's watchdog must not time this one


# Each message between the server and its inference process: its length, then a pickle.
FRAME = struct.Struct("!Q")


def _framed(payload: bytes) -> bytes:
    return FRAME.pack(len(payload)) + payload


def send_message(sock: socket.socket, payload: bytes) -> None:
    """Send one message on a blocking socket."""
    sock.sendall(_framed(payload))


def receive_message(sock: socket.socket) -> bytes:
    """Receive one message on a blocking socket; EOFError if the other end closed it."""
    (size,) = FRAME.unpack(_read_exactly(sock, FRAME.size))
    return _read_exactly(sock, size)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = sock.recv_into(view[got:])
        if not count:
            raise EOFError
        got += count
    return bytes(buffer)


# LiteRT's native log lines start with their level; the record carries it instead.
_NATIVE_LEVELS = {"INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


def stderr_record(line: str) -> tuple[int, str]:
    """The log level and message of a line the inference process wrote.

    LiteRT's "INFO: …", "WARNING: …" and "ERROR: …" lines get that level, the prefix
    dropped (the record says it once); anything else (a Python traceback) is a WARNING
    as written.
    """
    prefix, sep, rest = line.partition(": ")
    level = _NATIVE_LEVELS.get(prefix) if sep else None
    return (level, rest) if level is not None else (logging.WARNING, line)


def _forward_stderr(stream: IO[bytes], version: str) -> None:
    """Log each line of the inference process's stderr until it closes (the process
    ended). Reads to the end whatever happens: a child blocked on a full pipe would
    hang its batch."""
    with stream:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if line:
                level, message = stderr_record(line)
                with contextlib.suppress(Exception):
                    log.log(level, "%s", message, extra={"model_version": version})


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


def serve(sock: socket.socket) -> None:
    """Load the engine the first message describes, then answer batches until the
    server closes its end."""
    config: dict[str, Any] = pickle.loads(receive_message(sock))
    spec = Preprocess.model_validate(config["spec"])
    try:
        engine = Engine(Path(config["tflite"]), spec.shape, config["threads"], config["max_batch"])
        engine.warm_up(config["classes"])
    except Exception as exc:  # reported to the server, which keeps its current model
        send_message(sock, pickle.dumps(("error", f"{type(exc).__name__}: {exc}")))
        return
    send_message(sock, pickle.dumps(("ready", None)))
    while True:
        message = receive_message(sock)
        try:
            reply = _handle(engine, pickle.loads(message), spec, config["max_pixels"])
        except Exception as exc:  # this batch fails; the process serves the next one
            reply = ("failed", f"{type(exc).__name__}: {exc}")
        send_message(sock, pickle.dumps(reply, protocol=PROTOCOL))


if __name__ == "__main__":
    # Ctrl-C or a supervisor's SIGTERM reaches the whole process group; the server
    # drains its requests first and then closes its end of the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    with socket.socket(fileno=int(sys.argv[1])) as connection, contextlib.suppress(EOFError):
        serve(connection)  # EOFError: the server closed its end, or went away
