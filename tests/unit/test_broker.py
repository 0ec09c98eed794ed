"""The broker on an injected clock, with the one fake IdP, a pool the test runs by hand and
a refresher that runs tasks when the test says: refresh-ahead timing, counting, single
flight without threads, and the bulkheads (admission by deadline, per-key back-off,
remembered refusals, call budgets, bounded waiters)."""

from __future__ import annotations

import pytest

from tests.fakes import Clock, FakeIssuer, HeldExecutor, HeldWork
from token_worker.errors import (
    AskedToWait,
    CircuitOpen,
    IdpRefused,
    IdpTimeout,
    IdpUnavailable,
    NoToken,
    Overloaded,
    RateLimited,
    ShuttingDown,
)
from token_worker.metrics import Metrics
from token_worker.secret import Secret
from token_worker.tokens.broker import TokenBroker
from token_worker.tokens.bulkheads import Guards
from token_worker.tokens.cache import TokenCache
from token_worker.tokens.grant import ClientAuth, Grant
from token_worker.tokens.guards import Backoffs, Budgets, Known, Refusals
from token_worker.tokens.model import FROM_CACHE, FROM_IDP, Answer, TokenQuery

QUERY = TokenQuery("svc", "secret", "read")


class Outcomes:
    """Collects what a flight hands each request that waits for it."""

    def __init__(self) -> None:
        self.got: list[tuple[Answer | None, BaseException | None]] = []

    def __call__(self, answer: Answer | None, error: BaseException | None) -> None:
        self.got.append((answer, error))

    @property
    def tokens(self) -> list[str]:
        return [answer.token.access_token for answer, _ in self.got if answer is not None]

    @property
    def errors(self) -> list[BaseException]:
        return [error for _, error in self.got if error is not None]


def make(idp: FakeIssuer, clock: Clock, *, margin: float = 30.0, refresh_ahead: float = 0.2,
         metrics: Metrics | None = None, work: HeldWork | None = None,
         guards: Guards | None = None, cache: bool = True, per_key: int = 1000,
         waiting: int = 10_000) -> tuple[TokenBroker, HeldExecutor]:
    refresher = HeldExecutor(clock)
    tokens = TokenCache(max_entries=100, expiry_margin=margin, refresh_ahead=refresh_ahead,
                        now=clock) if cache else None
    broker = TokenBroker(idp, tokens, auth_method="client_secret_post", metrics=metrics,
                         refresher=refresher, work=work,
                         guards=guards or Guards.from_defaults(clock=clock.monotonic),
                         max_waiters_per_key=per_key, max_waiting=waiting,
                         clock=clock.monotonic)
    return broker, refresher


def guards(clock: Clock, *, rate: float = 1000.0, burst: int = 1000, memory: float = 10.0,
           first: float = 1.0, longest: float = 60.0) -> Guards:
    return Guards(
        backoffs=Backoffs(first=first, longest=longest, capacity=100, clock=clock.monotonic,
                          rng=lambda low, high: high),
        refusals=Refusals(ttl=memory, capacity=100, clock=clock.monotonic),
        budgets=Budgets(rate=rate, burst=burst, capacity=100, clock=clock.monotonic),
        proven=Known(100))


# --- the cache in front, refresh-ahead, counting --------------------------------------------


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
    broker, refresher = make(idp, clock)
    broker.fetch(QUERY)
    clock.advance(250)  # refresh window
    assert broker.cached(QUERY).source == FROM_CACHE
    assert len(refresher.queued) == 1  # queued, not started (both refresher threads busy)
    fresh = broker.fetch(QUERY, skip_cache=True)  # leads its own call at once
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
    broker.fetch(QUERY, skip_cache=True)  # a fetch that reads no tier: no second miss
    assert (count("miss"), count("hit")) == (1, 0)
    broker.fetch(QUERY)  # one lookup, a hit
    assert (count("miss"), count("hit")) == (1, 1)
    broker.fetch(TokenQuery("other", "secret", "read"))  # one lookup, a miss
    assert (count("miss"), count("hit")) == (2, 1)


def test_the_deadline_reaches_the_idp():
    clock, idp = Clock(), FakeIssuer(expires_in=45)
    broker, _ = make(idp, clock)
    due = clock.mono + 5
    broker.fetch(QUERY, deadline=due)
    assert idp.deadlines == [due]


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


# --- waiting is free: one task per key, however many wait -------------------------------------


def test_requests_for_a_key_being_fetched_wait_without_a_pool_task():
    clock, idp, work = Clock(), FakeIssuer(), HeldWork()
    broker, _ = make(idp, clock, work=work)
    outcomes = Outcomes()
    for _ in range(300):
        assert broker.ask(QUERY, deadline=clock.mono + 8, skip_cache=False,
                          on_outcome=outcomes) is None
    assert (work.submitted, broker.waiting, idp.calls) == (1, 299, 0)
    other = Outcomes()
    broker.ask(TokenQuery("other", "s", "read"), deadline=clock.mono + 8, skip_cache=False,
               on_outcome=other)
    assert work.submitted == 2  # another client's fetch queues beside it, unblocked
    work.run_all()
    assert outcomes.tokens == ["token-1"] * 300
    assert other.tokens == ["token-2"]
    assert (idp.calls, broker.waiting, broker.in_flight) == (2, 0, 0)


def test_skip_cache_requests_join_a_fetch_under_way_too():
    clock, idp, work = Clock(), FakeIssuer(), HeldWork()
    broker, _ = make(idp, clock, work=work)
    outcomes = Outcomes()
    for _ in range(20):
        broker.ask(QUERY, deadline=clock.mono + 8, skip_cache=True, on_outcome=outcomes)
    work.run_all()
    assert outcomes.tokens == ["token-1"] * 20
    assert idp.calls == 1


def test_waiters_for_one_key_and_in_all_are_bounded():
    clock, idp, work = Clock(), FakeIssuer(), HeldWork()
    broker, _ = make(idp, clock, work=work, per_key=3, waiting=5)
    outcomes = Outcomes()
    answers = [broker.ask(QUERY, deadline=None, skip_cache=False, on_outcome=outcomes)
               for _ in range(5)]
    assert answers[:4] == [None] * 4  # the leader and three waiters
    assert isinstance(answers[4], Overloaded)
    assert answers[4].retry_after
    second = [broker.ask(TokenQuery(f"c{n}", "s", "read"), deadline=None, skip_cache=False,
                         on_outcome=outcomes) for n in range(3)]
    assert second == [None] * 3  # three more leaders: leaders are not waiters
    for n in range(3):
        broker.ask(TokenQuery(f"c{n}", "s", "read"), deadline=None, skip_cache=False,
                   on_outcome=outcomes)
    assert broker.waiting == 5  # 3 + 2: the sixth did not get in
    work.run_all()
    assert broker.waiting == 0


def test_a_full_pool_answers_overloaded_and_gives_the_budget_back():
    clock, idp, work = Clock(), FakeIssuer(), HeldWork(capacity=1)
    broker, _ = make(idp, clock, work=work, guards=guards(clock, rate=0.001, burst=1))
    first = Outcomes()
    broker.ask(TokenQuery("a", "s", "read"), deadline=None, skip_cache=False, on_outcome=first)
    full = Outcomes()
    assert broker.ask(QUERY, deadline=None, skip_cache=False, on_outcome=full) is None
    assert [type(error) for error in full.errors] == [Overloaded]
    work.run_all()
    again = Outcomes()
    broker.ask(QUERY, deadline=None, skip_cache=False, on_outcome=again)
    work.run_all()
    assert again.tokens  # its budget was not spent on the call that never happened


def test_a_stop_answers_shutting_down_to_everyone_waiting_for_work_never_started():
    clock, idp, work = Clock(), FakeIssuer(), HeldWork()
    broker, _ = make(idp, clock, work=work)
    outcomes = Outcomes()
    for _ in range(5):
        broker.ask(QUERY, deadline=None, skip_cache=False, on_outcome=outcomes)
    work.close()
    assert [type(error) for error in outcomes.errors] == [ShuttingDown] * 5
    assert idp.calls == 0 and broker.in_flight == 0


# --- the deadline decides admission -------------------------------------------------------


def test_a_fetch_without_the_time_the_idp_needs_is_overloaded_and_never_reaches_it():
    clock, idp, work = Clock(), FakeIssuer(), HeldWork()
    idp.need = 2.0
    broker, _ = make(idp, clock, work=work, guards=guards(clock))
    outcomes = Outcomes()
    broker.ask(QUERY, deadline=clock.mono + 8, skip_cache=False, on_outcome=outcomes)
    broker.ask(QUERY, deadline=clock.mono + 8, skip_cache=False, on_outcome=outcomes)
    clock.advance(6.5)  # waited for a thread: 1.5 s left, the IdP needs 2
    work.run_all()
    assert idp.calls == 0
    assert [type(error) for error in outcomes.errors] == [Overloaded] * 2
    message = str(outcomes.errors[0])
    assert "waited 6.5 s for a worker thread" in message
    assert "1.5 s of the deadline were left" in message
    fresh = Outcomes()  # no back-off, no memory: the next request is asked for at once
    broker.ask(QUERY, deadline=clock.mono + 8, skip_cache=False, on_outcome=fresh)
    work.run_all()
    assert fresh.tokens == ["token-1"]


def test_a_fetch_turned_away_by_admission_costs_no_budget():
    clock, idp, work = Clock(), FakeIssuer(), HeldWork()
    idp.need = 2.0
    broker, _ = make(idp, clock, work=work, guards=guards(clock, rate=0.001, burst=1))
    late = Outcomes()
    broker.ask(QUERY, deadline=clock.mono + 8, skip_cache=False, on_outcome=late)
    clock.advance(7.0)
    work.run_all()
    assert [type(error) for error in late.errors] == [Overloaded]
    fresh = Outcomes()
    broker.ask(QUERY, deadline=clock.mono + 8, skip_cache=False, on_outcome=fresh)
    work.run_all()
    assert fresh.tokens == ["token-1"]


def test_enough_time_left_is_admitted():
    clock, idp, work = Clock(), FakeIssuer(), HeldWork()
    idp.need = 2.0
    broker, _ = make(idp, clock, work=work)
    outcomes = Outcomes()
    broker.ask(QUERY, deadline=clock.mono + 8, skip_cache=False, on_outcome=outcomes)
    clock.advance(6.0)  # exactly what the IdP needs is left
    work.run_all()
    assert outcomes.tokens == ["token-1"]


# --- a client's failures are its own: back-off, remembered refusals -------------------------


def test_a_clients_failure_backs_that_key_off_and_nobody_else():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock, guards=guards(clock, first=1.0, longest=8.0))
    idp.error = IdpUnavailable("identity provider failed: HTTP 500", status=500,
                               reason="HTTP 500")
    with pytest.raises(IdpUnavailable):
        broker.fetch(QUERY)
    assert idp.calls == 1
    for _ in range(100):  # held: answered at once, saying for how long
        with pytest.raises(IdpUnavailable, match=r"HTTP 500 \(1 failed fetches for this "
                                                 r"client: not asked again for 1 s\)") as held:
            broker.fetch(QUERY)
    assert held.value.retry_after == pytest.approx(1.0)
    assert idp.calls == 1
    idp.error = None
    assert broker.fetch(TokenQuery("other", "secret", "read")).source == FROM_IDP
    clock.advance(1.0)
    idp.error = IdpUnavailable("HTTP 500 again", status=500)
    with pytest.raises(IdpUnavailable):
        broker.fetch(QUERY)
    with pytest.raises(IdpUnavailable) as second:  # the pause doubles
        broker.fetch(QUERY)
    assert second.value.retry_after == pytest.approx(2.0)
    clock.advance(2.0)
    idp.error = None
    assert broker.fetch(QUERY).source == FROM_IDP  # a success clears it
    idp.error = IdpUnavailable("HTTP 500", status=500)
    broker.discard(QUERY)
    with pytest.raises(IdpUnavailable):
        broker.fetch(QUERY)
    with pytest.raises(IdpUnavailable) as fresh:
        broker.fetch(QUERY)
    assert fresh.value.retry_after == pytest.approx(1.0)  # counting starts again


def test_a_retry_after_longer_than_the_pause_is_honoured():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock, guards=guards(clock, first=1.0))
    idp.error = IdpUnavailable("HTTP 503", status=503, retry_after=30.0)
    with pytest.raises(IdpUnavailable):
        broker.fetch(QUERY)
    clock.advance(29)
    with pytest.raises(IdpUnavailable) as held:
        broker.fetch(QUERY)
    assert held.value.retry_after == pytest.approx(1.0)
    assert idp.calls == 1


def test_a_timeout_the_requests_own_deadline_cut_short_backs_nobody_off():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock)
    idp.error = IdpTimeout("no complete answer within 0.8 s", cut_short=True)
    for _ in range(3):
        with pytest.raises(IdpTimeout):
            broker.fetch(QUERY)
    assert idp.calls == 3


def test_a_429_backs_no_key_off_its_client_is_held_at_the_issuer():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock)
    idp.error = IdpUnavailable("identity provider failed: HTTP 429", status=429,
                               retry_after=1.0, reason="HTTP 429")
    for _ in range(3):
        with pytest.raises(IdpUnavailable):
            broker.fetch(QUERY)
    assert idp.calls == 3


def test_a_held_key_is_told_at_least_one_second_and_its_pause_is_logged(caplog):
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock, guards=guards(clock, first=1.23456))
    idp.error = IdpUnavailable("identity provider failed: HTTP 500", status=500)
    with (caplog.at_level("INFO", logger="token_worker.tokens.bulkheads"),
          pytest.raises(IdpUnavailable)):
        broker.fetch(QUERY)
    [line] = [r for r in caplog.records if r.message == "client backed off after a failed fetch"]
    assert (line.client_id, line.backoff_s) == ("svc", 1.23)  # type: ignore[attr-defined]
    clock.advance(1.0)  # 0.23 s left: the reply never says "0 s"
    with pytest.raises(IdpUnavailable, match=r"not asked again for 1 s\)") as held:
        broker.fetch(QUERY)
    assert held.value.retry_after == pytest.approx(0.23456)


def test_the_bulkheads_keep_100_000_clients_then_forget_the_least_recently_used():
    clock = Clock()
    kept, forgotten = (Guards.from_defaults(clock=clock.monotonic) for _ in range(2))
    for budgets, others in ((kept.budgets, 99_999), (forgotten.budgets, 100_000)):
        while budgets.take("first") == 0.0:  # idp.clientBurst spent
            pass
        for n in range(others):
            budgets.take(f"client-{n}")
    assert kept.budgets.take("first") > 0  # still spent: 100 000 clients fit
    assert forgotten.budgets.take("first") == 0.0  # forgotten: a fresh budget


def test_refusals_made_without_a_call_back_nobody_off():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock)
    idp.error = CircuitOpen("identity provider failing", attempted=False)
    for _ in range(3):
        with pytest.raises(CircuitOpen):
            broker.fetch(QUERY)
    assert idp.calls == 3


@pytest.mark.parametrize("code", ["invalid_client", "unauthorized_client", "invalid_scope"])
def test_a_refusal_is_remembered_for_its_key_only(code):
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock, guards=guards(clock, memory=10.0))
    idp.error = IdpRefused(code, description="client authentication failed", status=401)
    for _ in range(1000):
        with pytest.raises(IdpRefused) as refused:
            broker.fetch(QUERY)
    assert idp.calls == 1
    assert refused.value.error_code == code
    assert str(refused.value) == (f"identity provider refused the request: {code} (client "
                                  "authentication failed) (remembered: not asked again "
                                  "for 10 s)")  # said once, as the first time
    assert refused.value.description == "client authentication failed"
    with pytest.raises(IdpRefused):  # another secret is another key: asked
        broker.fetch(TokenQuery("svc", "right-secret", "read"))
    assert idp.calls == 2
    clock.advance(10)
    with pytest.raises(IdpRefused):
        broker.fetch(QUERY)
    assert idp.calls == 3


def test_other_refusals_are_not_remembered():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock, guards=guards(clock, first=0.5))
    idp.error = IdpRefused("invalid_request", status=400)
    with pytest.raises(IdpRefused):
        broker.fetch(QUERY)
    clock.advance(0.5)  # past the back-off such a refusal still gets
    with pytest.raises(IdpRefused):
        broker.fetch(QUERY)
    assert idp.calls == 2


def test_a_credentials_rotation_forgets_its_refusals_at_once():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock)
    named = TokenQuery("orders-client", "secret", "read", credential="orders")
    idp.error = IdpRefused("invalid_client", status=401)
    with pytest.raises(IdpRefused):
        broker.fetch(named)
    with pytest.raises(IdpRefused):
        broker.fetch(named)
    assert idp.calls == 1
    assert broker.forget_refusals("billing") == 0
    assert broker.forget_refusals("orders") == 1
    idp.error = None
    assert broker.fetch(named).source == FROM_IDP


def test_the_issuers_refusal_is_answered_without_a_call():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock)
    idp.refused["svc"] = CircuitOpen("identity provider failing", retry_after=7.0,
                                     attempted=False)
    outcome = broker.ask(QUERY, deadline=None, skip_cache=False, on_outcome=Outcomes())
    assert isinstance(outcome, CircuitOpen)
    assert idp.calls == 0
    assert broker.fetch(TokenQuery("other", "s", "read")).source == FROM_IDP


def test_the_issuers_refusal_is_counted_under_its_own_bulkhead():
    clock, idp, metrics = Clock(), FakeIssuer(), Metrics()
    broker, _ = make(idp, clock, metrics=metrics)

    def refusals(reason: str) -> float:
        return metrics.registry.get_sample_value("token_worker_bulkhead_refusals_total",
                                                 {"reason": reason}) or 0.0

    idp.refused["open"] = CircuitOpen("identity provider failing", retry_after=7.0,
                                      attempted=False)
    idp.refused["held"] = AskedToWait("identity provider asked to wait 120 s for this client",
                                      retry_after=120.0, attempted=False)
    for client_id in ("open", "held", "held"):
        broker.ask(TokenQuery(client_id, "s", "read"), deadline=None, skip_cache=False,
                   on_outcome=Outcomes())
    # docs/operations.md, "Bulkheads": the circuit is circuit_open, a 429's Retry-After
    # holding one client id is client_retry_after
    assert (refusals("circuit_open"), refusals("client_retry_after")) == (1, 2)
    assert idp.calls == 0


# --- budgets -----------------------------------------------------------------------------------


def test_skip_cache_beyond_the_budget_serves_the_cached_token_saying_so():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock, guards=guards(clock, rate=1.0, burst=3))
    answers = [broker.fetch(QUERY, skip_cache=True) for _ in range(10)]
    assert idp.calls == 3
    assert [a.fetch_refused for a in answers] == [""] * 3 + ["rate_limited"] * 7
    assert {a.token.access_token for a in answers[3:]} == {"token-3"}
    clock.advance(1.0)
    assert broker.fetch(QUERY, skip_cache=True).token.access_token == "token-4"


def test_over_budget_without_a_cached_token_is_rate_limited_with_retry_after():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock, cache=False, guards=guards(clock, rate=0.5, burst=2))
    broker.fetch(QUERY)
    broker.fetch(QUERY)
    with pytest.raises(RateLimited) as limited:
        broker.fetch(QUERY)
    assert limited.value.retry_after == pytest.approx(2.0)
    assert limited.value.error_code == "rate_limited"
    assert idp.calls == 2
    broker.fetch(TokenQuery("other", "s", "read"))  # another client's budget is its own
    assert idp.calls == 3


def test_a_named_credential_has_a_budget_of_its_own():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock, cache=False, guards=guards(clock, rate=0.1, burst=1))
    broker.fetch(TokenQuery("shared-client", "s", "read", credential="orders"))
    broker.fetch(TokenQuery("shared-client", "s", "read", credential="billing"))
    broker.fetch(TokenQuery("shared-client", "s", "read"))  # inline: the client id's
    with pytest.raises(RateLimited):
        broker.fetch(TokenQuery("shared-client", "s", "read", credential="orders"))
    assert idp.calls == 3


@pytest.mark.parametrize("ended", [
    Overloaded("this replica's ceiling of 100 identity provider calls a second is reached",
               retry_after=0.1),
    CircuitOpen("identity provider failing", retry_after=5.0, attempted=False),
    AskedToWait("identity provider asked to wait", retry_after=5.0, attempted=False),
    IdpTimeout("no time left to ask the identity provider", attempted=False),
])
def test_a_fetch_that_ended_before_any_call_costs_no_budget(ended):
    """The budget counts calls made: a refusal by the replica's ceiling or the endpoint's
    circuit must not leave the client rate_limited when its turn comes."""
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock, guards=guards(clock, rate=0.001, burst=1))
    idp.error = ended
    for _ in range(3):
        with pytest.raises(type(ended)):
            broker.fetch(QUERY)
    idp.error = None
    assert broker.fetch(QUERY).token.access_token == "token-4"


def test_a_fetch_that_reached_the_idp_spends_the_budget_even_when_it_failed():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock, guards=guards(clock, rate=0.001, burst=1))
    idp.error = IdpRefused("invalid_scope", status=400)
    with pytest.raises(IdpRefused):
        broker.fetch(TokenQuery("svc", "s", "bad"))
    idp.error = None
    with pytest.raises(RateLimited):
        broker.fetch(QUERY)


class GuessRefused(FakeIssuer):
    """An IdP that knows one secret per client: every other one is invalid_client."""

    def fetch_token(self, client_id, client_secret, scope, **kwargs):  # type: ignore[no-untyped-def]
        token = super().fetch_token(client_id, client_secret, scope, **kwargs)
        if client_secret != "secret":
            raise IdpRefused("invalid_client", status=401)
        return token


def test_guessed_secrets_spend_their_own_budget_never_the_proven_secrets():
    """A requester who knows a client id but not its secret floods it with guesses: the
    guesses are rate_limited after the burst; the service holding the real secret, which
    has obtained a token before, keeps its own budget for its real misses."""
    clock, idp = Clock(), GuessRefused()
    broker, _ = make(idp, clock, guards=guards(clock, rate=0.01, burst=3))
    broker.fetch(QUERY)  # the service: its secret is proven, one call of its own budget
    outcomes = []
    for n in range(100):
        try:
            broker.fetch(TokenQuery("svc", f"guess-{n}", "read"))
        except (IdpRefused, RateLimited) as error:
            outcomes.append(error.error_code)
    assert outcomes == ["invalid_client"] * 3 + ["rate_limited"] * 97
    assert idp.calls == 4  # one token, three guesses
    for scope in ("write", "admin"):  # the service's real misses: its own budget, 2 left
        assert broker.fetch(TokenQuery("svc", "secret", scope)).source == FROM_IDP
    with pytest.raises(RateLimited):  # and its own budget is bounded too
        broker.fetch(TokenQuery("svc", "secret", "other"))


def test_before_the_endpoint_is_discovered_a_fetch_spends_the_client_ids_budget():
    """The first request of a worker that learns its token endpoint by OIDC discovery has
    no cache key yet: its budget is the client id's, and the secret is proven after."""
    class Discovering(GuessRefused):
        known_token_url = ""  # unknown until the first call learns it (I/O, on the pool)

        @property  # type: ignore[override]
        def token_url(self) -> str:
            self.known_token_url = "https://idp.test/token"
            return self.known_token_url

    clock, idp = Clock(), Discovering()
    broker, _ = make(idp, clock, guards=guards(clock, rate=0.01, burst=2))
    assert broker.fetch(QUERY).source == FROM_IDP
    for guess in ("guess-1", "guess-2"):  # the first call moved to the proven budget
        with pytest.raises(IdpRefused):
            broker.fetch(TokenQuery("svc", guess, "read"))
    with pytest.raises(RateLimited):  # the id's budget spent by the guesses
        broker.fetch(TokenQuery("svc", "guess-3", "read"))
    assert broker.fetch(TokenQuery("svc", "secret", "write")).source == FROM_IDP  # proven


def test_a_secret_not_yet_proven_shares_the_client_ids_budget():
    clock, idp = Clock(), GuessRefused()
    broker, _ = make(idp, clock, guards=guards(clock, rate=0.01, burst=2))
    for n in range(2):
        with pytest.raises(IdpRefused):
            broker.fetch(TokenQuery("svc", f"guess-{n}", "read"))
    with pytest.raises(RateLimited):  # a first request with the real secret: not known yet
        broker.fetch(QUERY)


def test_a_token_from_the_cache_costs_no_budget():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock, guards=guards(clock, rate=0.001, burst=1))
    broker.fetch(QUERY)
    for _ in range(100):
        assert broker.fetch(QUERY).source == FROM_CACHE


# --- outcomes reach every waiter, errors too ----------------------------------------------------


def test_waiters_share_the_leaders_error_too():
    clock, idp, work = Clock(), FakeIssuer(), HeldWork()
    broker, _ = make(idp, clock, work=work)
    idp.error = IdpRefused("invalid_client", status=401)
    outcomes = Outcomes()
    for _ in range(10):
        broker.ask(QUERY, deadline=None, skip_cache=False, on_outcome=outcomes)
    work.run_all()
    assert [error.error_code for error in outcomes.errors  # type: ignore[attr-defined]
            ] == ["invalid_client"] * 10
    assert idp.calls == 1


def test_a_bug_in_the_issuer_reaches_every_waiter_and_is_raised():
    clock, idp, work = Clock(), FakeIssuer(), HeldWork()
    broker, _ = make(idp, clock, work=work)
    idp.error = RuntimeError("a bug")
    outcomes = Outcomes()
    for _ in range(3):
        broker.ask(QUERY, deadline=None, skip_cache=False, on_outcome=outcomes)
    with pytest.raises(RuntimeError):
        work.run_next()
    assert [type(error) for error in outcomes.errors] == [RuntimeError] * 3
    assert broker.in_flight == 0


def test_a_failing_waiter_does_not_cost_the_others_their_answer():
    clock, idp, work = Clock(), FakeIssuer(), HeldWork()
    broker, _ = make(idp, clock, work=work)
    outcomes = Outcomes()

    def broken(_answer: Answer | None, _error: BaseException | None) -> None:
        raise ValueError("a waiter's bug")

    broker.ask(QUERY, deadline=None, skip_cache=False, on_outcome=outcomes)
    broker.ask(QUERY, deadline=None, skip_cache=False, on_outcome=broken)
    broker.ask(QUERY, deadline=None, skip_cache=False, on_outcome=outcomes)
    work.run_all()
    assert outcomes.tokens == ["token-1", "token-1"]


def test_every_error_is_a_no_token_with_a_code():
    for error in (Overloaded("x"), RateLimited("x"), ShuttingDown("x"),
                  IdpUnavailable("x"), CircuitOpen("x")):
        assert isinstance(error, NoToken) and error.error_code


# --- grants: keys, certificates, resources, token endpoints of their own -------------------


def grant_query(secret: str = "s3cret", resources: tuple[str, ...] = (),  # noqa: S107
                token_url: str | None = None) -> TokenQuery:
    grant = Grant("svc", ClientAuth("client_secret_post", Secret(secret)), "read",
                  resources=resources, token_url=token_url)
    return TokenQuery("svc", "", "read", grant.auth.method, "named", grant)


def test_each_resource_is_a_cache_entry_of_its_own_and_the_grant_reaches_the_idp():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock)
    api = grant_query(resources=("https://api.example",))
    assert broker.fetch(api).source == FROM_IDP
    assert broker.fetch(grant_query(resources=("https://api.example",))).source == FROM_CACHE
    assert broker.fetch(grant_query(resources=("https://other.example",))).source == FROM_IDP
    assert broker.fetch(grant_query()).source == FROM_IDP
    assert idp.calls == 3
    assert [grant.resources if grant else None for grant in idp.grants] == [
        ("https://api.example",), ("https://other.example",), ()]


def test_another_proof_never_gets_a_cached_token():
    clock, idp = Clock(), FakeIssuer()
    broker, _ = make(idp, clock)
    broker.fetch(grant_query("first-secret"))
    assert broker.fetch(grant_query("second-secret")).source == FROM_IDP
    assert idp.calls == 2


def test_a_token_url_of_its_own_is_asked_through_its_own_issuer():
    clock, idp, elsewhere = Clock(), FakeIssuer(), FakeIssuer()
    asked: list[str] = []

    def endpoints(url: str) -> FakeIssuer:
        asked.append(url)
        return elsewhere

    broker = TokenBroker(idp, TokenCache(max_entries=10, expiry_margin=30, refresh_ahead=0.2,
                                         now=clock), auth_method="client_secret_post",
                         endpoints=endpoints, clock=clock.monotonic)
    there = grant_query(token_url="https://idp2.example/token")
    broker.fetch(there)
    broker.fetch(QUERY)
    assert (idp.calls, elsewhere.calls) == (1, 1)
    assert asked and set(asked) == {"https://idp2.example/token"}
    key = broker.key(there)
    assert key is not None and key.token_url == "https://idp2.example/token"
    elsewhere.refused["svc"] = CircuitOpen("the other IdP is failing", attempted=False)
    assert isinstance(broker.ask(grant_query(token_url="https://idp2.example/token",
                                             secret="x"), deadline=None, skip_cache=False,
                                 on_outcome=Outcomes()), CircuitOpen)
    assert broker.fetch(TokenQuery("svc", "y", "read")).source == FROM_IDP  # not this one
