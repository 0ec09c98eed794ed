"""Log plumbing: per-request warnings rate-limited with a count, secrets held per filter."""

from __future__ import annotations

import logging

from token_worker.logs import RateLimitedLog, RedactSecrets, redact_secrets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_interval_and_the_next_counts_what_was_suppressed(caplog):
    clock = Clock()
    warn = RateLimitedLog(logging.getLogger("unit.rate"), logging.WARNING, "bad thing",
                          interval=1.0, clock=clock)
    caplog.set_level(logging.WARNING)
    assert warn({"n": 1}) is True
    assert [warn({"n": 2}), warn({"n": 3})] == [False, False]
    clock.now += 0.999
    assert warn() is False
    clock.now += 0.001
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
