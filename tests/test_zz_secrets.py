"""Runs last (files run in name order): every log line the suite produced is scanned."""

from __future__ import annotations

import pytest

from tests.conftest import CAPTURED_LOG_LINES, KNOWN_SECRETS, report_figure


def test_no_client_secret_access_token_or_nats_password_in_any_log_line():
    if len(CAPTURED_LOG_LINES) < 500:
        pytest.skip("run with the whole suite: too few log lines were produced to scan")
    text = "\n".join(CAPTURED_LOG_LINES)
    assert len(KNOWN_SECRETS) > 20  # secrets and tokens of many tests were registered
    leaked = sorted(secret for secret in KNOWN_SECRETS if secret in text)
    assert leaked == []
    report_figure(f"scanned {len(CAPTURED_LOG_LINES)} log lines for "
          f"{len(KNOWN_SECRETS)} secrets and tokens: none found")
