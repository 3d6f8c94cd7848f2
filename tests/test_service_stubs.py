"""The loopback stubs clean up after themselves: a test leaves no thread of theirs behind."""

from __future__ import annotations

import socket

from service_stubs import HangingServer


def test_a_closed_hanging_server_leaves_no_thread() -> None:
    server = HangingServer()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        server.close()
    # Its accept thread once lived on to the end of the session.
    assert not server.thread.is_alive()
