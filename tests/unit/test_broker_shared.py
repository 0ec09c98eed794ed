"""Brokers of several replicas over one shared tier in memory (MemoryKeyValue), on a hand-moved
clock: a shared hit, one IdP call for a cold key, refresh-ahead once per fleet, skip_cache,
and a broken tier that only costs IdP calls."""

from __future__ import annotations

import threading

import pytest

from tests.fakes import Clock, FakeIssuer, HeldExecutor, MemoryKeyValue
from tests.helpers import wait_until
from token_worker.errors import KvTimeout
from token_worker.tokens.broker import FROM_CACHE, FROM_IDP, TokenBroker, TokenQuery
from token_worker.tokens.cache import TokenCache
from token_worker.tokens.shared import SharedTier

QUERY = TokenQuery("svc", "secret", "read")
FLEET_KEY = b"fleet-key-for-the-broker-tests-0123456789"
MARGIN = 30.0


class Replica:
    def __init__(self, kv: MemoryKeyValue, idp: FakeIssuer, clock: Clock) -> None:
        self.tier = SharedTier(kv, FLEET_KEY, expiry_margin=MARGIN, max_age=3600.0,
                               now=clock.time, monotonic=clock.monotonic)
        self.cache = TokenCache(max_entries=10, expiry_margin=MARGIN, refresh_ahead=0.2,
                                now=clock.time)
        self.refresher = HeldExecutor(clock.time)
        self.broker = TokenBroker(idp, self.cache,
                                  auth_method="client_secret_post", follower_timeout=5.0,
                                  refresher=self.refresher, shared=self.tier, lease_ttl=5.0)


@pytest.fixture
def idp(clock: Clock) -> FakeIssuer:
    return FakeIssuer(issued_at=clock.time)


def fleet(kv: MemoryKeyValue, idp: FakeIssuer, clock: Clock, size: int = 3) -> list[Replica]:
    return [Replica(kv, idp, clock) for _ in range(size)]


def test_a_token_one_replica_got_is_a_shared_hit_for_the_next_with_its_life_left(
        kv: MemoryKeyValue, idp: FakeIssuer, clock: Clock) -> None:
    first, second = fleet(kv, idp, clock, 2)
    got = first.broker.fetch(QUERY)
    clock.advance(100)

    assert second.broker.cached(QUERY) is None  # its own cache is cold
    shared = second.broker.fetch_after_miss(QUERY)

    assert (got.source, shared.source) == (FROM_IDP, FROM_CACHE)
    assert shared.token.access_token == got.token.access_token
    assert shared.expires_in == 200
    assert idp.calls == 1
    hit = second.broker.cached(QUERY)  # now in its local tier: no network
    assert hit is not None and hit.expires_in == 200
    assert second.tier.counts["hits"] == 1


def test_a_cold_key_costs_one_idp_call_however_many_replicas_ask_at_once(
        kv: MemoryKeyValue, idp: FakeIssuer, clock: Clock) -> None:
    replicas = fleet(kv, idp, clock)
    idp.gate = threading.Event()
    answers: list[str] = []

    def ask(replica: Replica) -> None:
        answers.append(replica.broker.fetch(QUERY).token.access_token)

    leader = threading.Thread(target=ask, args=(replicas[0],))
    leader.start()
    assert idp.entered.wait(5)
    others = [threading.Thread(target=ask, args=(r,)) for r in replicas[1:]]
    for thread in others:
        thread.start()
    wait_until(lambda: kv.watching == 2, timeout=5, what="both others watching the key")
    idp.gate.set()
    for thread in (leader, *others):
        thread.join(10)

    assert answers == ["token-1"] * 3
    assert idp.calls == 1
    assert [r.tier.counts["lease_waits"] for r in replicas[1:]] == [1, 1]
    assert sum(r.tier.counts["lease_takeovers"] for r in replicas) == 0


def test_refresh_ahead_refreshes_once_for_the_fleet(
        kv: MemoryKeyValue, idp: FakeIssuer, clock: Clock) -> None:
    first, second = fleet(kv, idp, clock, 2)
    first.broker.fetch(QUERY)
    second.broker.fetch(QUERY)  # a shared hit
    assert idp.calls == 1
    clock.advance(230)  # past the refresh point (216 s into a 300 s life), still servable

    for replica in (first, second):
        assert replica.broker.cached(QUERY) is not None  # the old token, refresh queued
    assert first.refresher.run_all() == 1
    assert second.refresher.run_all() == 1

    assert idp.calls == 2
    tokens = {r.broker.cached(QUERY).token.access_token for r in (first, second)}  # type: ignore[union-attr]
    assert tokens == {"token-2"}
    assert first.refresher.queued == second.refresher.queued == []


def test_skip_cache_reads_neither_tier_but_stores_in_both(
        kv: MemoryKeyValue, idp: FakeIssuer, clock: Clock) -> None:
    first, second = fleet(kv, idp, clock, 2)
    first.broker.fetch(QUERY)
    fresh = second.broker.fetch(QUERY, skip_cache=True)
    assert (fresh.token.access_token, fresh.source) == ("token-2", FROM_IDP)
    third = Replica(kv, idp, clock)
    assert third.broker.fetch(QUERY).token.access_token == "token-2"
    assert idp.calls == 2


def test_a_broken_tier_only_costs_idp_calls(
        kv: MemoryKeyValue, idp: FakeIssuer, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    first, second = fleet(kv, idp, clock, 2)
    kv.fail = KvTimeout("no answer within 1 s")
    assert first.broker.fetch(QUERY).source == FROM_IDP
    assert second.broker.fetch(QUERY).source == FROM_IDP
    assert idp.calls == 2
    assert first.tier.counts["errors"] >= 1
    assert [r.message for r in caplog.records].count(
        "shared token cache unavailable: serving from the local cache and the identity "
        "provider") == 2  # once per replica


def test_a_token_with_less_than_the_margin_left_is_not_served_from_the_shared_tier(
        kv: MemoryKeyValue, idp: FakeIssuer, clock: Clock) -> None:
    first, second = fleet(kv, idp, clock, 2)
    first.broker.fetch(QUERY)
    clock.advance(300 - MARGIN)
    answer = second.broker.fetch(QUERY)
    assert (answer.token.access_token, answer.source) == ("token-2", FROM_IDP)
