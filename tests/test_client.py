"""TokenClient, the requester API, against real workers, nats-server and IdP."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import DEMO, make_config
from token_worker import NoWorkerAnswered, RequestTimedOut, TokenClient, TokenRequestFailed


def test_many_threads_share_one_client(nats_server, idp, start_worker):
    start_worker(make_config(nats_server.url, idp.url))
    with TokenClient(nats_server.url, cache=False) as client, ThreadPoolExecutor(16) as pool:
        tokens = list(pool.map(lambda _: client.get_token(*DEMO), range(200)))
    assert len({t.access_token for t in tokens}) == 1  # the worker's cache answered
    assert all(250 < t.expires_in() <= 300 for t in tokens)
    assert client.requests_sent == 200
    assert idp.token_calls() >= 1


def test_the_clients_own_cache_keeps_tokens_until_near_expiry(nats_server, idp, start_worker):
    start_worker(make_config(nats_server.url, idp.url))
    clock = [time.time()]
    with TokenClient(nats_server.url, now=lambda: clock[0], expiry_margin=30) as client:
        first = client.get_token(*DEMO)
        for _ in range(100):
            assert client.get_token(*DEMO).access_token == first.access_token
        assert client.requests_sent == 1  # a service asking every second sends almost nothing
        clock[0] += 271  # 29 s left: inside the margin
        client.get_token(*DEMO)
        assert client.requests_sent == 2
        with pytest.raises(TokenRequestFailed) as refused:
            client.get_token(DEMO[0], "wrong")  # never the cached token of another secret
        assert refused.value.error_code == "invalid_client"


def test_no_worker_is_reported_at_once(nats_server):
    with TokenClient(nats_server.url, retries=0) as client:
        started = time.monotonic()
        with pytest.raises(NoWorkerAnswered, match="no worker is subscribed"):
            client.get_token(*DEMO)
        assert time.monotonic() - started < 0.5


def test_retries_find_a_worker_that_starts_late(nats_server, idp, start_worker):
    threading.Timer(0.3, lambda: start_worker(make_config(nats_server.url, idp.url))).start()
    with TokenClient(nats_server.url, retries=10, timeout=2) as client:
        assert client.get_token(*DEMO).access_token


def test_a_silent_worker_times_out_within_the_budget(nats_server, start_worker):
    release = threading.Event()
    start_worker(make_config(nats_server.url), lambda payload: (release.wait(5), b"{}")[1])
    try:
        with TokenClient(nats_server.url, timeout=0.3, retries=5) as client:
            started = time.monotonic()
            with pytest.raises(RequestTimedOut):
                client.get_token(*DEMO, budget=1.0)
            assert 0.9 < time.monotonic() - started < 1.6
    finally:
        release.set()


def test_refusal_carries_the_oauth2_code(nats_server, idp, start_worker):
    start_worker(make_config(nats_server.url, idp.url))
    with TokenClient(nats_server.url) as client, pytest.raises(TokenRequestFailed) as caught:
        client.get_token(DEMO[0], "bad-secret")
    assert caught.value.error_code == "invalid_client"
    assert "bad-secret" not in str(caught.value)


def test_no_server_fails_at_once_instead_of_retrying_for_minutes():
    from tests.servers import free_port
    from token_worker.errors import ReconnectGaveUp

    started = time.monotonic()
    with pytest.raises(ReconnectGaveUp, match="no NATS server reachable"):
        TokenClient(f"nats://127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 2
