"""The token broker in front of the retrying IdP client, against a local HTTP server that
fails on demand: single flight for errors too, retries, Retry-After, deadlines and the
circuit. No process is started (the real IdP's cases are tests/integration/test_broker.py)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from token_worker.config import IdpConfig
from token_worker.errors import CircuitOpen, IdpRefused, IdpTimeout, IdpUnavailable
from token_worker.idp import resilience
from token_worker.idp.client import IdpClient
from token_worker.idp.resilience import ResilientIdp
from token_worker.tokens.broker import TokenBroker, TokenQuery
from token_worker.tokens.cache import TokenCache


def make_broker(url: str, **idp_settings) -> tuple[TokenBroker, ResilientIdp]:
    config = IdpConfig(url=url, **{"timeout": 2.0, "deadline": 4.0, **idp_settings})
    idp = ResilientIdp(IdpClient(config), config)
    cache = TokenCache(max_entries=100, expiry_margin=30.0, refresh_ahead=0.2, now=time.time)
    return TokenBroker(idp, cache, auth_method="client_secret_post",
                       follower_timeout=config.deadline + 1), idp


def query() -> TokenQuery:
    return TokenQuery("svc", "svc-secret", "openid profile")


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The retry policy's pauses, recorded instead of slept (its clock stays the real one:
    attempts still take their time)."""
    taken: list[float] = []
    monkeypatch.setattr(resilience, "time", SimpleNamespace(monotonic=time.monotonic,
                                                            sleep=taken.append))
    return taken


def test_waiters_share_the_leaders_error_too(faulty):
    server = faulty(status=400, body=b'{"error": "invalid_client"}', delay=0.3)
    broker, _upstream = make_broker(server.url)
    barrier = threading.Barrier(10)

    def ask(_: int):
        barrier.wait()
        try:
            broker.fetch(query())
        except IdpRefused as error:
            return error.error_code
        return "no error"

    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(ask, range(10)))
    assert codes == ["invalid_client"] * 10
    assert server.calls == 1


def test_transient_failures_are_retried_then_succeed(faulty):
    server = faulty(script=[(503, b"", {}), (502, b"", {}),
                            (200, b'{"access_token": "t", "expires_in": 60}', {})])
    broker, _upstream = make_broker(server.url)
    assert broker.fetch(query()).token.access_token == "t"
    assert server.calls == 3


def test_oauth2_refusals_are_never_retried(faulty):
    server = faulty(status=401, body=b'{"error": "invalid_client"}')
    broker, _ = make_broker(server.url)
    with pytest.raises(IdpRefused):
        broker.fetch(query())
    assert server.calls == 1


def test_retry_after_is_honoured(faulty, pauses):
    server = faulty(script=[(429, b"", {"Retry-After": "1"}),
                            (200, b'{"access_token": "t", "expires_in": 60}', {})])
    broker, _ = make_broker(server.url)
    broker.fetch(query())
    assert len(pauses) == 1 and pauses[0] >= 1.0  # never sooner than the IdP asked
    assert server.calls == 2


def test_a_hanging_idp_is_bounded_by_the_deadline(faulty, pauses):
    server = faulty(body=b"{}", delay=30)
    broker, _ = make_broker(server.url, timeout=0.4, deadline=1.0)
    with pytest.raises(IdpTimeout, match="within the 1 s deadline"):
        broker.fetch(query())
    assert 2 <= server.calls <= 3  # attempts of up to 0.4 s fit the 1 s deadline, no more


def test_repeated_failures_open_the_circuit_and_fail_fast(faulty, pauses):
    server = faulty(status=503)
    broker, _upstream = make_broker(server.url, deadline=0.5, failure_threshold=3,
                                   cool_down=30)
    with pytest.raises(IdpUnavailable):
        broker.fetch(query())
    calls = server.calls
    assert calls >= 3
    paused = len(pauses)
    with pytest.raises(CircuitOpen):
        broker.fetch(query())
    assert len(pauses) == paused  # no back-off
    assert server.calls == calls  # the IdP was not asked
