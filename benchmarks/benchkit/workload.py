"""What is asked: the 100 registered clients, request bodies, and what a load run returns."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLIENTS = [{"client_id": f"bench-{i:03d}", "client_secret": f"bench-secret-{i:03d}",
            "token_endpoint_auth_method": "client_secret_post"} for i in range(100)]
"""Registered at the benchmark's IdP; request n is for ``CLIENTS[n % 100]``."""

REPLY_WAIT = 10.0
"""Seconds a generator waits without any reply before counting the rest lost."""

TIMESTAMP = "2026-11-29T12:00:00Z"


def payloads(count: int, *, scope_churn: int = 0) -> list[bytes]:
    """Inline requests (client id and secret in the body), cycling over the clients; with
    ``scope_churn``, as many distinct scopes (so as many distinct cache keys)."""
    bodies = []
    for i in range(count):
        client = CLIENTS[i % len(CLIENTS)]
        body = {"request_id": f"r{i}", "client_id": client["client_id"],
                "client_secret": client["client_secret"], "timestamp": TIMESTAMP}
        if scope_churn:
            body["scope"] = f"read churn-{i % scope_churn}"
        bodies.append(json.dumps(body).encode())
    return bodies


def named_payloads(count: int) -> list[bytes]:
    """Named requests: no client id, no secret (the subject names the credential)."""
    return [json.dumps({"request_id": f"r{i}", "timestamp": TIMESTAMP}).encode()
            for i in range(count)]


def credentials_dir(directory: str) -> str:
    """A CREDENTIALS_DIR holding every bench client as ``<client_id>/client_id`` etc.
    (made again over the same files when asked again)."""
    root = Path(directory) / "credentials"
    for client in CLIENTS:
        folder = root / client["client_id"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "client_id").write_text(client["client_id"] + "\n")
        (folder / "client_secret").write_text(client["client_secret"] + "\n")
    return str(root)


@dataclass
class Load:
    """What one load run measured."""

    seconds: float
    """From the first request sent to the last reply read."""
    latencies: Sequence[float] = field(repr=False)
    """Seconds per answered request (a list or an ``array('d')``)."""
    errors: int
    """Replies without an access token, and requests that got no reply."""
    generator_cpu: float
    """User and system CPU seconds the generator spent over ``seconds``."""
    first_error: str = ""
    """The first error reply (its start), or why a request got none; "" without errors."""
