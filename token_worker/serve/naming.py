"""The NATS client name, which operators read in the server's monitoring (``/connz``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

BASE_CLIENT_NAME = "Token Worker"
"""The name the original service used; every replica appends a unique suffix to it."""


def client_name(
    suffix: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    hostname: Callable[[], str] = socket.gethostname,
) -> str:
    """Return ``Token Worker-<suffix>``, unique per replica.

    The suffix is the first non-empty of: ``suffix`` (flag ``-name-suffix`` or config),
    env ``WORKER_NAME_SUFFIX``, env ``POD_NAME`` (the Kubernetes downward API), the host
    name. Only when all of those are empty is the bare ``Token Worker`` returned.
    """
    env = os.environ if environ is None else environ
    for candidate in (suffix, env.get("WORKER_NAME_SUFFIX"), env.get("POD_NAME"), hostname()):
        if candidate and candidate.strip():
            return f"{BASE_CLIENT_NAME}-{candidate.strip()}"
    return BASE_CLIENT_NAME
