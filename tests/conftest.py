"""What every test layer shares: every log line captured, a secret scan at the end of the
session, and the figures the run measured.

Light on purpose: no nats-py, no server, no process. The unit layer (``tests/unit``) and
the real-server suite (``tests/integration``) each add their own fixtures in their own
conftest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from token_worker.logs import ContextFilter, RedactSecrets, json_formatter

# --- figures: measured values the tests print at the end of the run --------------------

FIGURES: list[str] = []


def report_figure(text: str) -> None:
    """Keep a measured figure for the summary at the end of the run (shown in CI too)."""
    FIGURES.append(text)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("figures measured by this run")
        for line in FIGURES:
            terminalreporter.write_line(line)
    if LEAKS:
        terminalreporter.section("secrets found in log lines", red=True)
        for line in LEAKS:
            terminalreporter.write_line(line, red=True)


# --- every log line of the run, scanned for secrets when the session ends ---------------

CAPTURED_LOG_LINES: list[str] = []
"""Every log line the suite produced: in-process records (formatted as the CLI formats
them) and the stderr lines of worker processes."""
KNOWN_SECRETS: set[str] = set()
"""Client secrets, NATS passwords and access tokens the suite used or received."""
MIN_SECRET_LENGTH = 4
"""Secrets this long or longer are scanned for: the shortest the log redaction hides, as
documented (docs/testing.md), so a 4-character password that reached a line fails the run.
A literal, not the product's constant: a redaction that stopped hiding short secrets must
not quietly shrink the scan with it."""

LEAKS: list[str] = []
"""What the scan at the end of the session found (shown in the summary; fails the run)."""


def remember_secret(*values: str) -> None:
    """Register values that must never appear in a log line (shorter than
    :data:`MIN_SECRET_LENGTH`: not scanned, as the redaction does not hide them either)."""
    KNOWN_SECRETS.update(value for value in values if len(value) >= MIN_SECRET_LENGTH)


def find_leaks(lines: list[str], secrets: set[str]) -> list[str]:
    """One sentence per secret found in ``lines``, naming it only by its first characters
    and length, and showing the first line it was found in with the secret masked."""
    leaks = []
    for secret in sorted(secrets):
        found = [line for line in lines if secret in line]
        if found:
            masked = found[0].replace(secret, "********")[:300]
            shown = secret[:4] if len(secret) >= 8 else secret[:1]
            leaks.append(f"secret {shown!r}... ({len(secret)} characters) in "
                         f"{len(found)} log line(s); first: {masked}")
    return leaks


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Scan every log line the run produced (unit layer and real-server suite alike, in any
    order or selection) for every secret and token registered: a leak fails the run."""
    leaks = find_leaks(CAPTURED_LOG_LINES, KNOWN_SECRETS)
    if leaks:
        LEAKS.extend(leaks)
        if exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    report_figure(f"scanned {len(CAPTURED_LOG_LINES)} log lines for {len(KNOWN_SECRETS)} "
                  f"secrets and tokens: none found")


class _CaptureEveryLine(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            CAPTURED_LOG_LINES.append(self.format(record))
        except Exception:
            CAPTURED_LOG_LINES.append(record.getMessage())


@pytest.fixture(scope="session", autouse=True)
def capture_every_log_line() -> Iterator[None]:
    """Log at DEBUG into a handler set up as the CLI sets up its own."""
    handler = _CaptureEveryLine(logging.DEBUG)
    handler.setFormatter(json_formatter())
    handler.addFilter(ContextFilter("Token Worker-tests", "test"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
