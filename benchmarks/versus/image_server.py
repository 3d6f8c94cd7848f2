"""A fast loopback image server for the collection benchmarks, run as its own process.

`python benchmarks/image_server.py --port P --images N --latency 0.02` serves N distinct
32x32 PNGs at `/img/<i>.png` (and `ok` at `/ready`), answering every request
`latency` seconds after it arrived, like a remote file server. It is an asyncio
protocol on uvloop when available: one process answers many thousand requests a
second on one core, so the server, not the clients under test, is never the limit
(the tests' `fault_server.py`, a thread per connection, tops out near the rates
being measured on a 2-core machine). HTTP/1.1 keep-alive, GET only, no pipelining
beyond answering requests in order.
"""

from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from PIL import Image

HEAD_END = b"\r\n\r\n"


def png(seed: int, size: int = 32) -> bytes:
    """A small PNG whose bytes differ for every seed (random grey pixels)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def response(status: str, body: bytes, ctype: str) -> bytes:
    """A whole HTTP/1.1 keep-alive response, head and body."""
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


class Images(asyncio.Protocol):
    """One connection: answers each complete request head after the latency."""

    def __init__(self, answers: dict[bytes, bytes], latency: float) -> None:
        self.answers = answers
        self.latency = latency
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(HEAD_END)) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + len(HEAD_END) :]
            parts = head.split(b" ", 2)
            path = parts[1].split(b"?")[0] if len(parts) > 1 else b""
            answer = self.answers.get(path) or response("404 Not Found", b"not found", "text/plain")
            self.loop.call_later(self.latency, self._send, answer)

    def _send(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, images: int, latency: float) -> None:
    answers = {
        f"/img/{i}.png".encode(): response("200 OK", png(i), "image/png") for i in range(images)
    }
    answers[b"/ready"] = response("200 OK", b"ok", "text/plain")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Images(answers, latency), "127.0.0.1", port, backlog=1024, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.02)
    args = parser.parse_args()
    runner: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is in the project's lock
        runner = asyncio.run
    runner(serve(args.port, args.images, args.latency))


if __name__ == "__main__":
    main()
