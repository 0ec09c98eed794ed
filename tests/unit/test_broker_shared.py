"""Brokers of several replicas over one shared tier in memory (MemoryKeyValue), on a hand-moved
clock, each with a pool the test runs by hand and timers it fires: a shared hit, one IdP call
for a cold key (the others wait for the lease holder without a thread), a takeover when
nothing comes, refresh-ahead once per fleet, skip_cache, a broken tier that only costs IdP
calls, and a lost bucket given back what a replica holds."""

from __future__ import annotations

import threading

import pytest

from tests.fakes import Clock, FakeIssuer, HeldExecutor, HeldWork, ManualTimers, MemoryKeyValue
from tests.helpers import wait_until
from token_worker.errors import KvTimeout
from token_worker.tokens.broker import TokenBroker
from token_worker.tokens.cache import TokenCache
from token_worker.tokens.model import FROM_CACHE, FROM_IDP, Answer, TokenQuery
from token_worker.tokens.shared import SharedTier

QUERY = TokenQuery("svc", "secret", "read")
FLEET_KEY = b"fleet-key-for-the-broker-tests-0123456789"
MARGIN = 30.0


class Replica:
    """One replica's broker; ``held``: its pool runs only when the test says (else a task
    runs as it is queued, as with a free thread)."""

    def __init__(self, kv: MemoryKeyValue, idp: FakeIssuer, clock: Clock, *,
                 held: bool = False) -> None:
        self.timers = ManualTimers()
        self.tier = SharedTier(kv, FLEET_KEY, expiry_margin=MARGIN, max_age=3600.0,
                               now=clock.time, monotonic=clock.monotonic, timers=self.timers)
        self.cache = TokenCache(max_entries=10, expiry_margin=MARGIN, refresh_ahead=0.2,
                                now=clock.time)
        self.refresher = HeldExecutor(clock.time)
        self.work = HeldWork(at_once=not held)
        self.broker = TokenBroker(idp, self.cache, auth_method="client_secret_post",
                                  refresher=self.refresher, shared=self.tier, lease_ttl=5.0,
                                  work=self.work, clock=clock.monotonic)
        self.outcomes: list[tuple[Answer | None, BaseException | None]] = []

    def ask(self, deadline: float | None = None) -> None:
        """A request that missed the local cache, as the handler asks."""
        outcome = self.broker.ask(QUERY, deadline=deadline, skip_cache=False,
                                  on_outcome=lambda *got: self.outcomes.append(got))
        if outcome is not None:
            self.outcomes.append((outcome, None) if isinstance(outcome, Answer)
                                 else (None, outcome))

    @property
    def tokens(self) -> list[str]:
        return [answer.token.access_token for answer, _ in self.outcomes if answer]


@pytest.fixture
def idp(clock: Clock) -> FakeIssuer:
    return FakeIssuer(issued_at=clock.time)


def fleet(kv: MemoryKeyValue, idp: FakeIssuer, clock: Clock, size: int = 3, *,
          held: bool = False) -> list[Replica]:
    return [Replica(kv, idp, clock, held=held) for _ in range(size)]


def test_a_token_one_replica_got_is_a_shared_hit_for_the_next_with_its_life_left(
        kv: MemoryKeyValue, idp: FakeIssuer, clock: Clock) -> None:
    first, second = fleet(kv, idp, clock, 2)
    got = first.broker.fetch(QUERY)
    clock.advance(100)

    assert second.broker.cached(QUERY) is None  # its own cache is cold
    second.ask()
    [(shared, _)] = second.outcomes

    assert shared is not None
    assert (got.source, shared.source) == (FROM_IDP, FROM_CACHE)
    assert shared.token.access_token == got.token.access_token
    assert shared.expires_in == 200
    assert idp.calls == 1
    hit = second.broker.cached(QUERY)  # now in its local tier: no network
    assert hit is not None and hit.expires_in == 200
    assert second.tier.counts["hits"] == 1


def test_a_cold_key_costs_one_idp_call_and_the_others_wait_without_a_thread(
        kv: MemoryKeyValue, idp: FakeIssuer, clock: Clock) -> None:
    leader, *others = fleet(kv, idp, clock, held=True)
    idp.gate = threading.Event()
    leader.ask(deadline=clock.mono + 8)
    calling = threading.Thread(target=leader.work.run_all)  # its pool thread, at the IdP
    calling.start()
    assert idp.entered.wait(5)
    for replica in others:
        replica.ask(deadline=clock.mono + 8)
        assert replica.work.run_all() == 1  # looked, found the lease held, let go
        assert replica.work.tasks == [] and replica.outcomes == []
    assert kv.watching == 2  # each waits on its watch, holding no thread
    idp.gate.set()
    calling.join(10)

    wait_until(lambda: all(r.tokens for r in (leader, *others)), what="every answer")
    assert [r.tokens for r in (leader, *others)] == [["token-1"]] * 3
    assert idp.calls == 1
    assert [r.tier.counts["lease_waits"] for r in others] == [1, 1]
    assert sum(r.tier.counts["lease_takeovers"] for r in (leader, *others)) == 0
    assert kv.watching == 0
    assert all(r.timers.pending == [] for r in others)


def test_a_waiter_takes_over_when_nothing_comes_within_half_its_time(
        kv: MemoryKeyValue, idp: FakeIssuer, clock: Clock) -> None:
    holder, waiter = fleet(kv, idp, clock, 2, held=True)
    shared_key = holder.tier.key(idp.token_url, "svc", "secret", "read",
                                 "client_secret_post")
    holder.tier.lease(shared_key, ttl=5.0)  # and then it hangs, never storing
    waiter.ask(deadline=clock.mono + 8)
    waiter.work.run_all()
    assert [when for when, _ in waiter.timers.pending] == [clock.mono + 4.0]  # half of 8
    clock.advance(4.0)
    assert waiter.timers.fire_due(clock.mono) == 1
    assert len(waiter.work.tasks) == 1  # the takeover needs a thread again
    waiter.work.run_all()
    assert waiter.tokens == ["token-1"] and idp.calls == 1
    assert waiter.tier.counts["lease_takeovers"] == 1


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


def test_a_lost_bucket_is_given_back_what_a_replica_holds(
        kv: MemoryKeyValue, idp: FakeIssuer, clock: Clock) -> None:
    first = Replica(kv, idp, clock)
    first.tier.prepare()
    first.broker.fetch(QUERY)  # in both tiers
    kv.drop_bucket()  # the stream deleted at runtime
    other = TokenQuery("other", "secret", "read")
    assert first.broker.fetch(other).source == FROM_IDP  # the tier fails fast, rests
    clock.advance(5)
    first.broker.fetch(TokenQuery("third", "secret", "read"))  # the probe makes it again
    assert first.tier.counts["recreated"] == 1
    assert first.refresher.run_all() == 1  # the refill, in the background
    newcomer = Replica(kv, idp, clock)
    calls = idp.calls
    for query in (QUERY, other):
        assert newcomer.broker.fetch(query).source == FROM_CACHE  # from the bucket
    assert idp.calls == calls
