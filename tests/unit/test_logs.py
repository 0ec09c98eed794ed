"""Log plumbing: per-request warnings rate-limited with a count, secrets held per filter."""

from __future__ import annotations

import io
import json
import logging

import pytest

from tests.fakes import Clock
from token_worker.logs import (
    ContextFilter,
    RateLimitedLog,
    RedactSecrets,
    json_formatter,
    redact_secrets,
    request_context,
)


def test_one_line_per_interval_and_the_next_counts_what_was_suppressed(caplog):
    clock = Clock()
    warn = RateLimitedLog(logging.getLogger("unit.rate"), logging.WARNING, "bad thing",
                          interval=1.0, clock=clock.monotonic)
    caplog.set_level(logging.WARNING)
    assert warn({"n": 1}) is True
    assert [warn({"n": 2}), warn({"n": 3})] == [False, False]
    clock.advance(0.999)
    assert warn() is False
    clock.advance(0.001)
    assert warn({"n": 5}) is True
    lines = [(r.getMessage(), r.suppressed, getattr(r, "n", None)) for r in caplog.records]
    assert lines == [("bad thing", 0, 1), ("bad thing", 3, 5)]


def record(message: str, **extra: str) -> logging.LogRecord:
    made = logging.LogRecord("unit", logging.INFO, __file__, 1, message, None, None)
    made.__dict__.update(extra)
    return made


def test_each_filter_redacts_only_the_secrets_it_was_given():
    mine, other = RedactSecrets(["pa55-mine"]), RedactSecrets()
    line = record("user pa55-mine", url="nats://u:pa55-mine@h")
    assert mine.filter(line)
    assert (line.getMessage(), line.url) == ("user ********", "nats://u:********@h")
    untouched = record("user pa55-mine")
    other.filter(untouched)
    assert untouched.getMessage() == "user pa55-mine"
    RedactSecrets(["abc"]).filter(short := record("abc"))  # too short to redact safely
    assert short.getMessage() == "abc"


@pytest.mark.parametrize("secret", ["pw4x", "pw5xy", "passwd7", "pass-8ch"])
def test_secrets_of_four_characters_or_more_are_redacted(secret):
    """The documented shortest redacted secret is 4 characters (docs/security.md): a short
    NATS password is hidden in the message and in every field."""
    line = record(f"connect with {secret} failed", url=f"nats://u:{secret}@h")
    RedactSecrets([secret]).filter(line)
    assert (line.getMessage(), line.url) == ("connect with ******** failed",
                                             "nats://u:********@h")


@pytest.mark.parametrize("secret", ["!pa55word", "$ecret-1", " leading-space", "~tilde-pw"])
def test_a_secret_is_redacted_whatever_characters_it_starts_with(secret):
    """Characters that sort before or after the mark's '*' change nothing."""
    line = record(f"pw={secret}", field=f"x{secret}y")
    RedactSecrets([secret]).filter(line)
    assert (line.getMessage(), line.field) == ("pw=********", "x********y")


def test_a_secret_given_twice_is_still_redacted():
    log_filter = RedactSecrets(["given-twice-1", "another-one"])
    log_filter.add("given-twice-1")
    line = record("given-twice-1 and another-one")
    log_filter.filter(line)
    assert line.getMessage() == "******** and ********"


def test_secrets_under_four_characters_are_left_alone():
    """Shorter values would mangle ordinary words: "abc" stays, in "abcd" too."""
    line = record("abc in abcd", url="nats://u:abc@h")
    RedactSecrets(["abc"]).filter(line)
    assert (line.getMessage(), line.url) == ("abc in abcd", "nats://u:abc@h")


def test_redact_secrets_reaches_the_filters_on_the_loggers_handlers():
    logger = logging.getLogger("unit.redact")
    handler = logging.NullHandler()
    log_filter = RedactSecrets()
    handler.addFilter(log_filter)
    logger.addHandler(handler)
    try:
        redact_secrets(["token-value-1"], logger)
    finally:
        logger.removeHandler(handler)
    line = record("x token-value-1")
    log_filter.filter(line)
    assert line.getMessage() == "x ********"


BREAKERS = ["\u2028", "\u2029", "\x85", "\x80", "\x9f", "\u202a", "\u202e", "\u2066",
            "\u2069"]


def test_no_field_can_split_or_reorder_a_json_log_line():
    stream = io.StringIO()
    logger = logging.getLogger("test.one_line")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    logger.addHandler(handler)
    try:
        for breaker in BREAKERS:
            forged = f'x{breaker}{{"level": "ERROR", "message": "forged"}}'
            logger.warning("bad request %s", forged, extra={"client_id": forged})
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()  # splits on U+2028, U+0085, ... as readers do
    assert len(lines) == len(BREAKERS)
    for line, breaker in zip(lines, BREAKERS, strict=True):
        assert breaker not in line
        assert f"\\u{ord(breaker):04x}" in line
        record = json.loads(line)  # valid JSON: the escapes read back as the original
        assert record["client_id"] == f'x{breaker}{{"level": "ERROR", "message": "forged"}}'
        assert record["message"] == f"bad request {record['client_id']}"


def test_other_unicode_stays_readable_in_log_lines():
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "caf\u00e9 \u4e2d \U0001f600",
                               None, None)
    line = json_formatter().format(record)
    assert "caf\u00e9 \u4e2d \U0001f600" in line


def test_a_long_request_id_and_client_id_are_cut_to_128_characters_saying_how_many_more():
    stream = io.StringIO()
    logger = logging.getLogger("unit.context")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(ContextFilter("worker", "test"))
    logger.addHandler(handler)
    try:
        with request_context("r" * 4096, "c" * 200):
            logger.warning("refused")
        logger.warning("explicit", extra={"request_id": "e" * 129, "client_id": "short"})
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "r" * 128 + "…(+3968)"
    assert first["client_id"] == "c" * 128 + "…(+72)"
    assert (second["request_id"], second["client_id"]) == ("e" * 128 + "…(+1)", "short")
