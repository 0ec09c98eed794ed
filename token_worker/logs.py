"""JSON log lines with the worker's name and the request being served.

Every line carries ``time``, ``level``, ``logger``, ``message``, ``client_name``,
``environment`` and, while a request is served, its ``request_id`` and ``client_id``
(set with :func:`request_context`, carried by a context variable so that concurrent
requests on other threads never mix). Secrets are never passed to a logger; as a second
line of defence, :class:`RedactSecrets` replaces any registered secret value in a line.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
from collections.abc import Iterator
from typing import IO, ClassVar

from pythonjsonlogger.json import JsonFormatter

_request: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "token_worker_request", default=None
)


@contextlib.contextmanager
def request_context(request_id: str, client_id: str = "") -> Iterator[None]:
    """Tag every log line of this block with the request it serves."""
    token = _request.set((request_id, client_id))
    try:
        yield
    finally:
        _request.reset(token)


class ContextFilter(logging.Filter):
    """Adds the worker's identity and the current request to every record."""

    def __init__(self, client_name: str, environment: str) -> None:
        super().__init__()
        self.client_name = client_name
        self.environment = environment

    def filter(self, record: logging.LogRecord) -> bool:
        record.client_name = self.client_name
        record.environment = self.environment
        current = _request.get()
        if current is not None and not hasattr(record, "request_id"):
            record.request_id, record.client_id = current
        return True


class RedactSecrets(logging.Filter):
    """Replaces registered secret values (the NATS password, token) in formatted lines."""

    _secrets: ClassVar[set[str]] = set()
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def register(cls, secret: str) -> None:
        """Never let ``secret`` reach a log line."""
        if len(secret) >= 4:
            with cls._lock:
                cls._secrets.add(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in tuple(self._secrets):
            redacted = redacted.replace(secret, "********")
        if redacted != message:
            record.msg, record.args = redacted, None
        for key, value in list(record.__dict__.items()):
            if isinstance(value, str) and key not in ("msg", "message"):
                for secret in tuple(self._secrets):
                    if secret in value:
                        setattr(record, key, value.replace(secret, "********"))
        return True


def json_formatter() -> JsonFormatter:
    """The formatter of every token-worker log line."""
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
        json_ensure_ascii=False,
    )


def configure_logging(
    level: str,
    client_name: str,
    environment: str,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send all logging to ``stream`` (stderr) as JSON lines; return the handler.

    Replaces the root logger's handlers, as a process entry point should; libraries
    embedding :class:`~token_worker.TokenWorker` can skip this and use their own set-up.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter())
    handler.addFilter(ContextFilter(client_name, environment))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # urllib3 at DEBUG logs every connection; useful, harmless (no bodies, no headers).
    logging.getLogger("urllib3").setLevel(max(root.level, logging.INFO))
    return handler

