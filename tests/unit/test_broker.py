"""The broker on an injected clock with a fake IdP and a refresher that runs tasks when the
test says: refresh-ahead timing, refreshes that never block fetches, counting, deadlines."""

from __future__ import annotations

import threading
import time

import pytest

from tests.fakes import Clock, FakeIssuer, HeldExecutor
from tests.helpers import wait_until
from token_worker.errors import IdpTimeout
from token_worker.metrics import Metrics
from token_worker.tokens.broker import FROM_CACHE, FROM_IDP, TokenBroker, TokenQuery
from token_worker.tokens.cache import TokenCache

QUERY = TokenQuery("svc", "secret", "read")


def make(idp: FakeIssuer, clock: Clock, *, margin: float = 30.0, refresh_ahead: float = 0.2,
         metrics: Metrics | None = None, follower_timeout: float = 5.0
         ) -> tuple[TokenBroker, HeldExecutor]:
    refresher = HeldExecutor(clock)
    cache = TokenCache(max_entries=100, expiry_margin=margin, refresh_ahead=refresh_ahead,
                       now=clock)
    broker = TokenBroker(idp, cache, auth_method="client_secret_post",
                         follower_timeout=follower_timeout, metrics=metrics,
                         refresher=refresher)
    return broker, refresher


@pytest.mark.parametrize(("expires_in", "margin"), [(45, 30.0), (60, 30.0), (300, 30.0),
                                                    (45, 5.0), (33, 30.0)])
def test_steady_traffic_never_waits_for_the_idp_after_the_first_request(expires_in, margin):
    """One client every 100 ms for ten minutes; each refresh takes 300 ms at the IdP."""
    clock, idp = Clock(), FakeIssuer(expires_in=expires_in)
    broker, refresher = make(idp, clock, margin=margin)
    sources = []
    for _ in range(6000):
        clock.advance(0.1)
        refresher.run_due(clock.wall, latency=0.3)
        sources.append(broker.fetch(QUERY).source)
    assert sources[0] == FROM_IDP
    assert sources.count(FROM_IDP) == 1, "a request waited for the IdP"
    servable = expires_in - margin
    assert idp.calls <= 600 / (servable / 2) + 2  # refreshed, not on every request


def test_a_queued_refresh_never_holds_the_key_against_a_fetch():
    clock, idp = Clock(), FakeIssuer(expires_in=300)
    broker, refresher = make(idp, clock, follower_timeout=0.2)
    broker.fetch(QUERY)
    clock.advance(250)  # refresh window
    assert broker.cached(QUERY).source == FROM_CACHE
    assert len(refresher.queued) == 1  # queued, not started (both refresher threads busy)
    started = time.monotonic()
    fresh = broker.fetch(QUERY, skip_cache=True)  # leads its own call: does not wait
    assert time.monotonic() - started < 0.1
    assert (fresh.source, fresh.token.access_token) == (FROM_IDP, "token-2")
    assert refresher.run_due(clock.wall, latency=0) == 1
    assert idp.calls == 2  # the late refresh saw the fresh token and did nothing
    assert broker.in_flight == 0


def test_one_refresh_per_key_however_many_hits():
    clock, idp = Clock(), FakeIssuer(expires_in=300)
    broker, refresher = make(idp, clock)
    broker.fetch(QUERY)
    clock.advance(250)
    for _ in range(50):
        broker.cached(QUERY)
    assert len(refresher.queued) == 1
    refresher.run_due(clock.wall, latency=0)
    assert idp.calls == 2
    assert broker.cached(QUERY).token.access_token == "token-2"
    assert broker.refreshes == 1


def test_each_request_counts_one_hit_or_one_miss():
    clock, idp, metrics = Clock(), FakeIssuer(expires_in=300), Metrics()
    broker, _ = make(idp, clock, metrics=metrics)

    def count(event: str) -> float:
        return metrics.registry.get_sample_value("token_worker_cache_events_total",
                                                 {"event": event}) or 0.0

    assert broker.cached(QUERY) is None  # the reading thread's lookup: one miss
    broker.fetch(QUERY, skip_cache=True)  # the pool thread's fetch: no second miss
    assert (count("miss"), count("hit")) == (1, 0)
    broker.fetch(QUERY)  # one lookup, a hit
    assert (count("miss"), count("hit")) == (1, 1)
    broker.fetch(TokenQuery("other", "secret", "read"))  # one lookup, a miss
    assert (count("miss"), count("hit")) == (2, 1)


def test_a_passed_deadline_fails_without_calling_the_idp():
    clock, idp = Clock(), FakeIssuer(expires_in=45)
    broker, _ = make(idp, clock)
    with pytest.raises(IdpTimeout, match="deadline passed"):
        broker.fetch(QUERY, deadline=time.monotonic() - 0.01)
    assert idp.calls == 0


def test_the_deadline_reaches_the_idp_and_bounds_a_followers_wait():
    clock, idp = Clock(), FakeIssuer(expires_in=45)
    broker, _ = make(idp, clock)
    due = time.monotonic() + 5
    broker.fetch(QUERY, deadline=due)
    assert idp.deadlines == [due]

    idp.gate = threading.Event()
    leader = threading.Thread(target=broker.fetch, args=(QUERY,), kwargs={"skip_cache": True})
    leader.start()
    wait_until(lambda: broker.in_flight == 1, what="the leader's call")
    started = time.monotonic()
    with pytest.raises(IdpTimeout, match="call in flight"):
        broker.fetch(QUERY, skip_cache=True, deadline=time.monotonic() + 0.2)
    assert 0.15 < time.monotonic() - started < 0.5
    idp.gate.set()
    leader.join(5)


def test_discard_drops_the_cached_token():
    clock, idp = Clock(), FakeIssuer(expires_in=300)
    broker, _ = make(idp, clock)
    broker.fetch(QUERY)
    assert broker.discard(QUERY) is True
    assert broker.cached(QUERY) is None
    assert broker.fetch(QUERY).source == FROM_IDP
    assert broker.discard(TokenQuery("svc", "other-secret", "read")) is False


def test_a_huge_expires_in_is_capped_in_replies_and_cache():
    clock, idp = Clock(), FakeIssuer(expires_in=10**12)
    broker, _ = make(idp, clock)
    assert broker.fetch(QUERY).expires_in == 86_400
    clock.advance(100)
    assert broker.fetch(QUERY).expires_in == 86_300


def test_no_refresh_is_queued_while_the_idp_fails_fast():
    clock, idp = Clock(), FakeIssuer(expires_in=300)
    broker, refresher = make(idp, clock)
    broker.fetch(QUERY)
    clock.advance(250)
    idp.failing_fast = True  # circuit open or a Retry-After running
    for _ in range(100):
        assert broker.cached(QUERY).source == FROM_CACHE  # still served
    assert refresher.queued == []  # and no refresh that could only fail (and log) at once
    idp.failing_fast = False
    broker.cached(QUERY)
    assert len(refresher.queued) == 1
