"""A loopback HTTP server with injected faults, for the collector's tests and benchmark.

Run alone (`python fault_server.py --port P --images N --latency 0.02`) it serves N
generated PNGs at /img/<i>.png, which is how the benchmark keeps the server out of
the measured process.
"""

from __future__ import annotations

import argparse
import io
import json
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image


def png(seed: int, size: int = 8) -> bytes:
    """A small PNG whose bytes differ for every seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Route:
    """What one path answers; `fail_times` faulty answers come before the good one."""

    body: bytes = b""
    content_type: str = "image/png"
    status: int = 200
    fail_times: int = 0
    fail_status: int = 500
    retry_after: str | None = None
    delay: float = 0.0
    headers: dict[str, str] | None = None  # extra headers of the good answer (Location, …)


class _Server(ThreadingHTTPServer):
    # The default listen backlog (5) drops connections when many clients connect
    # at once; the client then sees a connect timeout that never reached a route.
    request_queue_size = 256


class FaultServer:
    """Serves registered routes on 127.0.0.1 and counts every request per path."""

    def __init__(self, latency: float = 0.0, port: int = 0) -> None:
        self.latency = latency
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.hit_times: defaultdict[str, list[float]] = defaultdict(list)
        self.user_agents: Counter[str] = Counter()  # User-Agent of every request
        self.chunked = False  # send bodies chunked, without a Content-Length
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, path: str, route: Route) -> str:
        self.routes[path] = route
        return self.url + path

    def reset_hits(self) -> None:
        with self._lock:
            self.hits.clear()
            self.hit_times.clear()

    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real file servers do

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                with server._lock:
                    server.hits[path] += 1
                    server.hit_times[path].append(time.monotonic())
                    server.user_agents[self.headers.get("User-Agent", "")] += 1
                    count = server.hits[path]
                if path == "/hits":  # lets a test in another process read the counts
                    with server._lock:
                        body = json.dumps(dict(server.hits)).encode()
                    self._send(200, body, "application/json")
                    return
                route = server.routes.get(path)
                time.sleep(server.latency + (route.delay if route else 0.0))
                if route is None:
                    self._send(404, b"not found", "text/plain")
                elif count <= route.fail_times:
                    extra = {"Retry-After": route.retry_after} if route.retry_after else {}
                    self._send(route.fail_status, b"try later", "text/plain", extra)
                else:
                    self._send(route.status, route.body, route.content_type, route.headers)

            def _send(
                self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
            ) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    if server.chunked:
                        self.send_header("Transfer-Encoding", "chunked")
                    else:
                        self.send_header("Content-Length", str(len(body)))
                    for key, value in (extra or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(_chunks(body) if server.chunked else body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to do

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _chunks(body: bytes, size: int = 1024) -> bytes:
    """`body` in HTTP/1.1 chunked encoding, `size` bytes a chunk."""
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.02)
    args = parser.parse_args()
    server = FaultServer(latency=args.latency, port=args.port)
    for index in range(args.images):
        server.add(f"/img/{index}.png", Route(body=png(index, 32)))
    server.add("/ready", Route(body=b"ok", content_type="text/plain"))
    server._httpd.serve_forever()


if __name__ == "__main__":
    main()
