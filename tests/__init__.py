"""token-worker's tests: ``tests/unit`` (no server, no nats-py, no Node) and
``tests/integration`` (real nats-server and IdP processes)."""

import random
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository's root."""

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _below_ephemeral() -> range:
    """Ports under the kernel's ephemeral range (where it picks the source port of every
    outgoing connection, and what ``bind(0)`` hands out): a port chosen there can be taken,
    between the choosing and the server's bind, by any connection another test run (tox
    runs two environments at once) happens to open."""
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - 12000), low)


def free_port(host: str = "127.0.0.1", family: socket.AddressFamily = socket.AF_INET) -> int:
    """A TCP port on ``host`` that nobody uses right now, chosen at random below the
    ephemeral range, so that only another test's choice (not any outgoing connection)
    can take it before its server binds it."""
    ports = _below_ephemeral()
    for _ in range(200):
        port = random.choice(ports)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port on {host} in {ports.start}-{ports.stop - 1}")
