"""token-worker's tests: ``tests/unit`` (no server, no nats-py, no Node) and
``tests/integration`` (real nats-server and IdP processes)."""

import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository's root."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
