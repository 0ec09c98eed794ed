"""JSON log lines with the worker's name and the request being served.

Every line carries ``time``, ``level``, ``logger``, ``message``, ``client_name``,
``environment`` and, while a request is served, its ``request_id`` and ``client_id``
(set with :func:`request_context`, carried by a context variable so that concurrent
requests on other threads never mix). Secrets are never passed to a logger; as a second
line of defence, :class:`RedactSecrets` replaces the secret values it was given in a line.
Per-request warnings go through :class:`RateLimitedLog`, so a flood of bad requests is not
a flood of log lines. Lines are UTF-8 (``ensure_ascii`` off), but the code points a reader
may take for a line break (U+0085, U+2028, U+2029, the C1 controls) or that reorder what a
terminal shows (the bidi controls) are written as JSON ``\\u`` escapes
(:class:`OneLineJsonFormatter`): whatever a field holds, a line stays one line.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

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


LONGEST_LOGGED_ID = 128
"""Characters of a ``request_id`` or ``client_id`` a line keeps: the requester chooses
them (up to 4096), and a refused request should not cost kilobytes of log."""


def _shortened(value: str) -> str:
    """``value`` cut to :data:`LONGEST_LOGGED_ID` characters, saying how many were left out."""
    if len(value) <= LONGEST_LOGGED_ID:
        return value
    return f"{value[:LONGEST_LOGGED_ID]}…(+{len(value) - LONGEST_LOGGED_ID})"


class ContextFilter(logging.Filter):
    """Adds the worker's identity and the current request to every record, its
    ``request_id`` and ``client_id`` cut to :data:`LONGEST_LOGGED_ID` characters."""

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
        for key in ("request_id", "client_id"):
            value = getattr(record, key, None)
            if isinstance(value, str) and len(value) > LONGEST_LOGGED_ID:
                setattr(record, key, _shortened(value))
        return True


class RedactSecrets(logging.Filter):
    """Replaces the secret values it holds (NATS password and token, ...) in formatted lines.

    Each filter holds its own secrets: :func:`configure_logging` gives it the ones it
    knows, and a :class:`~token_worker.TokenWorker` gives its own to the filters on the
    root logger's handlers (:func:`redact_secrets`).
    """

    MIN_LENGTH = 4
    """Shorter values are not redacted (they would mangle ordinary words)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Never let these values reach a line that passes this filter."""
        kept = {secret for secret in secrets if len(secret) >= self.MIN_LENGTH}
        if kept:
            with self._lock:  # replaced whole: filter() reads it without the lock
                self._secrets = self._secrets | kept

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets
        if not secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in secrets:
            redacted = redacted.replace(secret, "********")
        if redacted != message:
            record.msg, record.args = redacted, None
        for key, value in list(record.__dict__.items()):
            if isinstance(value, str) and key not in ("msg", "message"):
                clean = value
                for secret in secrets:
                    clean = clean.replace(secret, "********")
                if clean != value:
                    setattr(record, key, clean)
        return True


def redact_secrets(secrets: Iterable[str], logger: logging.Logger | None = None) -> None:
    """Give ``secrets`` to every :class:`RedactSecrets` filter on the handlers of
    ``logger`` (the root logger by default), where this process's lines are written."""
    values = tuple(secrets)
    for handler in (logger or logging.getLogger()).handlers:
        for log_filter in handler.filters:
            if isinstance(log_filter, RedactSecrets):
                log_filter.add(*values)


class RateLimitedLog:
    """One line per ``interval`` for an event that may happen on every request.

    The next line written says how many were ``suppressed`` since the previous one, so a
    flood of bad requests costs a line a second, not a line a request. ``clock`` is
    injectable so tests need not sleep.
    """

    def __init__(self, logger: logging.Logger, level: int, message: str, *,
                 interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._level = level
        self._message = message
        self._interval = interval
        self._clock = clock
        self._last = -float("inf")
        self._suppressed = 0
        self._lock = threading.Lock()

    def __call__(self, extra: dict[str, Any] | None = None, *, exc_info: bool = False
                 ) -> bool:
        """Log the line unless one was logged less than ``interval`` ago; True if logged."""
        now = self._clock()
        with self._lock:
            if now - self._last < self._interval:
                self._suppressed += 1
                return False
            suppressed, self._suppressed = self._suppressed, 0
            self._last = now
        self._logger.log(self._level, self._message,
                         extra={**(extra or {}), "suppressed": suppressed}, exc_info=exc_info)
        return True


_LINE_BREAKING = re.compile("[\x80-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""What JSON leaves raw but must not be: the C1 controls (U+0085 is NEL, a line
break to ``str.splitlines`` and many log shippers), the line and paragraph separators,
and the bidi embeddings, overrides and isolates (which reorder a line on a terminal)."""


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


class OneLineJsonFormatter(JsonFormatter):
    """A :class:`JsonFormatter` whose lines no reader can split or reorder: the code points
    of :data:`_LINE_BREAKING` are escaped (valid JSON: they read back unchanged)."""

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        line = super().jsonify_log_record(log_data)
        return line if line.isascii() else _LINE_BREAKING.sub(_escape, line)  # isascii: O(1)


def json_formatter() -> JsonFormatter:
    """The formatter of every token-worker log line."""
    return OneLineJsonFormatter(
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
    *,
    secrets: Iterable[str] = (),
) -> logging.Handler:
    """Send all logging to ``stream`` (stderr) as JSON lines; return the handler.

    ``secrets`` are redacted from every line (a worker adds its own when it is built).

    Replaces the root logger's handlers, as a process entry point should; libraries
    embedding :class:`~token_worker.TokenWorker` can skip this and use their own set-up.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter())
    handler.addFilter(ContextFilter(client_name, environment))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # urllib3 at DEBUG logs every connection; useful, harmless (no bodies, no headers).
    logging.getLogger("urllib3").setLevel(max(root.level, logging.INFO))
    return handler

