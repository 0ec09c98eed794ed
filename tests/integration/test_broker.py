"""The token broker against the real IdP: cache, single-flight, refresh-ahead, resilience.

Time is injected: tests move a clock instead of sleeping for tokens to age.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fakes import Clock
from tests.integration.helpers import DEMO, SCOPED, TEST_CLIENTS, make_config, token_request
from tests.integration.processes import TOKEN_PATH, IdpServer
from token_worker.config import IdpConfig
from token_worker.errors import IdpRefused
from token_worker.idp.client import IdpClient
from token_worker.idp.resilience import ResilientIdp
from token_worker.tokens.broker import TokenBroker
from token_worker.tokens.cache import TokenCache
from token_worker.tokens.model import FROM_CACHE, FROM_IDP, TokenQuery


def make_broker(url: str, *, clock: Clock | None = None, cache: bool = True,
                margin: float = 30.0, refresh_ahead: float = 0.2, **idp_settings):
    config = IdpConfig(url=url, token_path=TOKEN_PATH,
                       **{"timeout": 2.0, "deadline": 4.0, **idp_settings})
    idp = ResilientIdp(IdpClient(config), config)
    token_cache = TokenCache(max_entries=100, expiry_margin=margin,
                             refresh_ahead=refresh_ahead, now=clock or time.time) if cache else None
    return TokenBroker(idp, token_cache, auth_method="client_secret_post"), idp


def query(client=DEMO, scope="openid profile") -> TokenQuery:
    return TokenQuery(client[0], client[1], scope)


def test_miss_then_hit_with_expires_in_recomputed(idp):
    clock = Clock()
    broker, upstream = make_broker(idp.url, clock=clock)
    first = broker.fetch(query())
    clock.advance(100)
    second = broker.fetch(query())
    assert (first.source, second.source) == (FROM_IDP, FROM_CACHE)
    assert second.token.access_token == first.token.access_token
    assert (first.expires_in, second.expires_in) == (300, 200)
    assert upstream.calls == 1


def test_a_wrong_secret_never_gets_the_cached_token(idp):
    broker, upstream = make_broker(idp.url)
    good = broker.fetch(query())
    with pytest.raises(IdpRefused) as refused:
        broker.fetch(query((DEMO[0], "guessed-secret")))
    assert refused.value.error_code == "invalid_client"
    assert broker.cached(query((DEMO[0], "guessed-secret"))) is None
    assert broker.fetch(query()).token.access_token == good.token.access_token
    assert upstream.calls == 2


def test_scope_sets_are_normalised(idp):
    broker, upstream = make_broker(idp.url)
    first = broker.fetch(query(scope="openid profile"))
    assert broker.fetch(query(scope="profile  openid profile")).source == FROM_CACHE
    assert broker.fetch(query(scope="openid")).source == FROM_IDP  # another scope set
    assert first.token.scope == "openid profile"
    assert upstream.calls == 2


def test_tokens_are_not_served_inside_the_expiry_margin():
    short_idp = IdpServer(clients=TEST_CLIENTS, ttl=60).start()
    try:
        clock = Clock()
        broker, upstream = make_broker(short_idp.url, clock=clock, margin=20,
                                       refresh_ahead=0.0)
        first = broker.fetch(query())
        clock.advance(39)  # 21 s left: still served
        assert broker.fetch(query()).token.access_token == first.token.access_token
        clock.advance(2)  # 19 s left: inside the margin
        renewed = broker.fetch(query())
        assert renewed.source == FROM_IDP
        assert renewed.token.access_token != first.token.access_token
        assert upstream.calls == 2
        assert short_idp.token_calls() == 2
    finally:
        short_idp.stop()


def test_fifty_threads_for_one_key_make_one_idp_call():
    slow_idp = IdpServer(clients=TEST_CLIENTS, delay_ms=300).start()
    try:
        broker, upstream = make_broker(slow_idp.url)
        barrier = threading.Barrier(50)

        def ask(_: int):
            barrier.wait()
            return broker.fetch(query())

        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(ask, range(50)))
        assert {a.token.access_token for a in answers} == {answers[0].token.access_token}
        assert upstream.calls == 1
        assert slow_idp.token_calls() == 1
    finally:
        slow_idp.stop()


def test_refresh_ahead_replaces_the_token_while_requests_never_wait():
    slow_idp = IdpServer(clients=TEST_CLIENTS, delay_ms=400).start()
    try:
        clock = Clock()
        broker, upstream = make_broker(slow_idp.url, clock=clock, refresh_ahead=0.2)
        old = broker.fetch(query()).token.access_token
        clock.advance(250)  # the last 20% of a 300 s life
        started = time.monotonic()
        during = broker.cached(query())
        assert time.monotonic() - started < 0.2  # no waiting on the 400 ms IdP
        assert during is not None
        assert during.token.access_token == old
        deadline = time.monotonic() + 5
        while broker.cached(query()).token.access_token == old:
            assert time.monotonic() < deadline, "refresh never landed"
            time.sleep(0.02)
        assert upstream.calls == 2
        assert broker.refreshes == 1
    finally:
        slow_idp.stop()


def test_a_failed_refresh_keeps_serving_the_valid_token():
    own_idp = IdpServer(clients=TEST_CLIENTS).start()
    clock = Clock()
    broker, upstream = make_broker(own_idp.url, clock=clock, deadline=0.3)
    token = broker.fetch(query()).token.access_token
    own_idp.stop()  # the IdP goes away
    clock.advance(260)  # refresh window
    assert broker.cached(query()).token.access_token == token
    deadline = time.monotonic() + 5
    while upstream.calls < 2 or broker.in_flight:
        assert time.monotonic() < deadline, "refresh was never tried"
        time.sleep(0.02)
    assert broker.cached(query()).token.access_token == token  # still served


def test_idp_down_with_a_warm_cache_still_serves(nats_server, start_worker, requester_factory):
    own_idp = IdpServer(clients=TEST_CLIENTS).start()
    try:
        start_worker(make_config(nats_server.url, own_idp.url))
        requester = requester_factory(nats_server.url)
        warm = requester.request(token_request(DEMO, "w1"))
        assert warm["token_source"] == "idp"
    finally:
        own_idp.stop()
    served = requester.request(token_request(DEMO, "w2"))
    assert served["token_source"] == "cache"
    assert served["access_token"] == warm["access_token"]
    cold = requester.request(token_request(SCOPED, "w3"))
    assert cold["error_code"] == "idp_unavailable"


def test_skip_cache_and_disabled_cache_ask_the_idp(nats_server, idp, start_worker,
                                                   requester_factory):
    start_worker(make_config(nats_server.url, idp.url))
    requester = requester_factory(nats_server.url)
    first = requester.request(token_request(DEMO))
    fresh = requester.request(token_request(DEMO, skip_cache=True))
    assert fresh["token_source"] == "idp"
    assert fresh["access_token"] != first["access_token"]
    assert requester.request(token_request(DEMO, skip_cache="yes"))["error_code"] == (
        "invalid_request")


def test_oidc_discovery_finds_the_token_endpoint(idp):
    config = IdpConfig(url="https://unused.example", issuer=idp.url + "/realms/phoenix",
                       timeout=2.0)
    client = IdpClient(config)
    assert client.token_url == idp.token_url
    assert client.fetch_token(*DEMO, "").access_token


def test_discovery_never_blocks_the_reading_thread(nats_server, faulty, start_worker,
                                                   requester_factory):
    hanging = faulty(body=b"{}", delay=30)  # discovery will hang until its timeout
    start_worker(make_config(nats_server.url, idp={
        "issuer": hanging.url + "/realms/phoenix", "timeout": 1.0, "deadline": 1.0}))
    requester = requester_factory(nats_server.url)
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(requester.request, token_request(DEMO, "needs-discovery"))
        time.sleep(0.1)
        started = time.monotonic()
        bad = requester.request(b"{broken")  # answered on the reading thread
        assert time.monotonic() - started < 0.5  # not behind the 1 s discovery timeout
        assert bad["error_code"] == "invalid_request"
        assert slow.result(10)["error_code"] in ("idp_unavailable", "idp_timeout")


def test_a_non_json_200_costs_one_call_and_healthy_clients_are_served_at_once(
        nats_server, faulty, start_worker, requester_factory):
    server = faulty(script=[(200, b"<html>maintenance</html>", {}),
                            (200, b'{"access_token": "good-token-300", "expires_in": 300.0}',
                             {})])
    start_worker(make_config(nats_server.url, server.url, idp={"failure_threshold": 1}))
    requester = requester_factory(nats_server.url)
    bad = requester.request(token_request(DEMO, "bad"))
    assert bad["error_code"] == "idp_bad_response"
    assert bad["error"] == ("unusable answer from the identity provider (HTTP 200): not JSON")
    assert server.calls == 1
    started = time.monotonic()
    healthy = requester.request(token_request(SCOPED, "healthy"))
    assert time.monotonic() - started < 1.0  # no circuit opened, no back-off
    assert (healthy["access_token"], healthy["expires_in"]) == ("good-token-300", 300)
    again = requester.request(token_request(SCOPED, "again"))
    assert again["token_source"] == "cache"  # expires_in 300.0 is cached
    assert server.calls == 2


def test_one_clients_429_leaves_every_other_client_served(nats_server, faulty, start_worker,
                                                          requester_factory):
    """Finding 4: a 429 is about the client that got it; the others go on at once."""
    server = faulty(script=[(429, b"", {"Retry-After": "120"}),
                            (200, b'{"access_token": "other-token", "expires_in": 300}', {})])
    start_worker(make_config(nats_server.url, server.url, idp={
        "deadline": 1.0, "failure_threshold": 1}))
    requester = requester_factory(nats_server.url)
    held = requester.request(token_request(DEMO, "noisy"))
    assert (held["error_code"], held["error"]) == (
        "idp_unavailable", "identity provider asked to wait 120 s")
    again = requester.request(token_request(DEMO, "noisy-again"))
    assert "for this client; not asking it again" in again["error"]
    other = requester.request(token_request(SCOPED, "other"))
    assert other["access_token"] == "other-token"
    assert server.calls == 2
