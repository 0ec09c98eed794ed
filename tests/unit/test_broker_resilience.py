"""The token broker in front of the retrying IdP client, against a local HTTP server that
fails on demand: single flight for errors too, retries, Retry-After, deadlines and the
circuit. No process is started (the real IdP's cases are tests/integration/test_broker.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from token_worker.config import IdpConfig
from token_worker.errors import CircuitOpen, IdpRefused, IdpTimeout, IdpUnavailable
from token_worker.idp.client import IdpClient
from token_worker.idp.resilience import ResilientIdp
from token_worker.tokens.broker import TokenBroker
from token_worker.tokens.cache import TokenCache
from token_worker.tokens.model import TokenQuery


def make_broker(url: str, *, sleep: Callable[[float], None] = time.sleep,
                **idp_settings: Any) -> tuple[TokenBroker, ResilientIdp]:
    config = IdpConfig(url=url, **{"timeout": 2.0, "deadline": 4.0, **idp_settings})
    idp = ResilientIdp(IdpClient(config), config, sleep=sleep)
    cache = TokenCache(max_entries=100, expiry_margin=30.0, refresh_ahead=0.2, now=time.time)
    return TokenBroker(idp, cache, auth_method="client_secret_post"), idp


def query(client_id: str = "svc") -> TokenQuery:
    return TokenQuery(client_id, "svc-secret", "openid profile")


def test_waiters_share_the_leaders_error_too(faulty):
    server = faulty(status=400, body=b'{"error": "invalid_client"}', delay=0.3)
    broker, _upstream = make_broker(server.url)
    barrier = threading.Barrier(10)

    def ask(_: int) -> str:
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


def test_retry_after_is_honoured(faulty):
    server = faulty(script=[(429, b"", {"Retry-After": "1"}),
                            (200, b'{"access_token": "t", "expires_in": 60}', {})])
    pauses: list[float] = []
    broker, _ = make_broker(server.url, sleep=pauses.append)
    broker.fetch(query())
    assert len(pauses) == 1 and pauses[0] >= 1.0  # never sooner than the IdP asked
    assert server.calls == 2


def test_a_hanging_idp_is_bounded_by_the_deadline(faulty):
    server = faulty(body=b"{}", delay=30)
    broker, _ = make_broker(server.url, timeout=0.4, deadline=1.0)
    with pytest.raises(IdpTimeout, match=r"no token within the 1 s deadline"):
        broker.fetch(query())
    assert 2 <= server.calls <= 3  # attempts of up to 0.4 s fit the 1 s deadline, no more


def test_one_clients_failures_never_open_the_circuit(faulty):
    server = faulty(status=503)
    broker, upstream = make_broker(server.url, deadline=2.0, failure_threshold=3,
                                   cool_down=30, sleep=lambda _: None)
    with pytest.raises(IdpUnavailable):
        broker.fetch(query("noisy"))
    assert server.calls == 3  # retried, at most three attempts a fetch
    assert not upstream.circuit_open and upstream.refusal("quiet") is None


def test_failures_of_several_clients_open_the_circuit_and_fail_fast(faulty):
    server = faulty(status=503)
    broker, upstream = make_broker(server.url, deadline=0.5, failure_threshold=3,
                                   cool_down=30)
    for client in ("a", "b", "c"):
        with pytest.raises(IdpUnavailable):
            broker.fetch(query(client))
    assert upstream.circuit_open
    calls = server.calls
    with pytest.raises(CircuitOpen, match=r"failures for 3 different clients"):
        broker.fetch(query("d"))
    assert server.calls == calls  # the IdP was not asked


def test_an_unreachable_endpoint_opens_the_circuit_whoever_asked(faulty):
    server = faulty(status=200)
    url = server.url
    server.shutdown()
    server.server_close()  # nothing listens there now: connection refused
    broker, upstream = make_broker(url, deadline=2.0, failure_threshold=3, cool_down=30,
                                   sleep=lambda _: None)
    with pytest.raises(IdpUnavailable, match="unreachable"):
        broker.fetch(query("only-one"))
    assert upstream.circuit_open
