"""Fixtures for the collector's tests: a loopback HTTP server with injected faults."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fault_server, shared with the benchmark

from fault_server import FaultServer


@pytest.fixture
def http_server() -> Iterator[FaultServer]:
    """A FaultServer on a free 127.0.0.1 port; register routes with `.add(path, Route(...))`."""
    server = FaultServer().start()
    try:
        yield server
    finally:
        server.stop()
