"""The bulkheads' parts on a hand-moved clock: the endpoint's circuit (evidence by distinct
clients, half-open probes), per-key back-off, remembered refusals, token buckets, a flight
and its waiters, and the timers that end waits held by no thread."""

from __future__ import annotations

import threading
import time

import pytest

from tests.fakes import Clock
from tests.helpers import wait_until
from token_worker.idp.circuit import LONGEST_OPEN, CircuitState, EndpointCircuit, Verdict
from token_worker.tokens.flight import Flight
from token_worker.tokens.guards import Backoffs, Budgets, Refusals
from token_worker.tokens.timers import Timers


def circuit(clock: Clock, *, threshold: int = 5, probes: int = 3) -> EndpointCircuit:
    return EndpointCircuit(threshold=threshold, window=30.0, cool_down=10.0, probes=probes,
                           clock=clock.monotonic)


# --- the circuit -------------------------------------------------------------------------------


def test_one_clients_failures_never_open_it_however_many():
    clock = Clock()
    breaker = circuit(clock)
    for _ in range(1000):
        assert breaker.failed("noisy", unreachable=False) is False
    assert breaker.state is CircuitState.CLOSED and breaker.refusal() is None


def test_failures_of_threshold_distinct_clients_in_the_window_open_it():
    clock = Clock()
    breaker = circuit(clock, threshold=5)
    for client in ("a", "b", "c", "d"):
        assert breaker.failed(client, unreachable=False) is False
    assert breaker.state is CircuitState.CLOSED  # four: one short of the threshold
    assert breaker.failed("e", unreachable=False) is True
    verdict = breaker.refusal()
    assert isinstance(verdict, Verdict)
    assert verdict.retry_after == 10.0
    assert verdict.evidence == "failures for 5 different clients in 30 s"


def test_failures_outside_the_window_or_before_a_success_do_not_add_up():
    clock = Clock()
    breaker = circuit(clock, threshold=3)
    breaker.failed("a", unreachable=False)
    clock.advance(31)
    breaker.failed("b", unreachable=False)
    breaker.failed("c", unreachable=False)
    assert breaker.state is CircuitState.CLOSED  # "a" was too long ago
    breaker.answered()  # the endpoint works for someone: the evidence starts again
    breaker.failed("d", unreachable=False)
    assert breaker.state is CircuitState.CLOSED


def test_failures_to_reach_it_count_whoever_asked():
    clock = Clock()
    breaker = circuit(clock, threshold=3)
    for _ in range(2):
        breaker.failed("same", unreachable=True)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failed("same", unreachable=True) is True


def test_a_long_retry_after_among_the_failures_keeps_it_open_longer_but_not_forever():
    clock = Clock()
    breaker = circuit(clock, threshold=2)
    breaker.failed("a", unreachable=False, retry_after=60.0)
    breaker.failed("b", unreachable=False)
    assert breaker.refusal().retry_after == 60.0  # type: ignore[union-attr]
    clock.advance(60)
    breaker.acquire()
    huge = circuit(clock, threshold=1)
    huge.failed("a", unreachable=False, retry_after=10**9)
    assert huge.refusal().retry_after == LONGEST_OPEN  # type: ignore[union-attr]


def test_half_open_lets_a_few_probes_through_and_the_first_answer_closes_it():
    clock = Clock()
    breaker = circuit(clock, threshold=1, probes=3)
    breaker.failed("a", unreachable=False)
    assert isinstance(breaker.acquire(), Verdict)  # open: nobody goes
    clock.advance(10)
    assert breaker.state is CircuitState.HALF_OPEN
    assert [breaker.acquire() for _ in range(3)] == [True, True, True]  # probes
    assert isinstance(breaker.acquire(), Verdict)  # every probe slot taken
    assert breaker.refusal().retry_after == 1.0  # type: ignore[union-attr]
    breaker.failed("a", unreachable=False, probe=True)
    breaker.no_evidence(probe=True)  # a probe cut short says nothing: its slot back
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.answered(probe=True)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.acquire() is False


def test_half_open_opens_again_only_when_every_probe_failed():
    clock = Clock()
    breaker = circuit(clock, threshold=1, probes=3)
    breaker.failed("a", unreachable=False)
    clock.advance(10)
    for _ in range(3):
        assert breaker.acquire() is True
    assert breaker.failed("x", unreachable=False, probe=True) is False
    assert breaker.failed("x", unreachable=False, probe=True) is False
    assert breaker.failed("x", unreachable=False, probe=True) is True
    assert breaker.state is CircuitState.OPEN
    assert breaker.openings == 2


# --- per-key back-off, remembered refusals, budgets ----------------------------------------


def test_a_backoff_doubles_with_full_jitter_and_honours_a_retry_after():
    clock = Clock()
    drawn: list[tuple[float, float]] = []

    def rng(low: float, high: float) -> float:
        drawn.append((low, high))
        return low

    backoffs: Backoffs[str, str] = Backoffs(first=1.0, longest=8.0, capacity=10,
                                            clock=clock.monotonic, rng=rng)
    pauses = [backoffs.failed("k", "error") for _ in range(6)]
    assert drawn == [(0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 8.0), (4.0, 8.0), (4.0, 8.0)]
    assert pauses == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoffs.failed("k", "error", retry_after=30.0) == 30.0
    held = backoffs.held("k")
    assert held is not None and (held.error, held.failures) == ("error", 7)
    assert backoffs.held("other") is None
    clock.advance(30)
    assert backoffs.held("k") is None
    backoffs.succeeded("k")
    assert backoffs.failed("k", "error") == 0.5


def test_a_backoff_doubles_up_to_its_longest_from_any_first_pause_the_config_accepts():
    clock = Clock()
    drawn: list[tuple[float, float]] = []

    def rng(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    # idp.clientBackoff: above 0; idp.clientBackoffMax: at most 86400 (README)
    backoffs: Backoffs[str, str] = Backoffs(first=1e-5, longest=86400.0, capacity=10,
                                            clock=clock.monotonic, rng=rng)
    pauses = [backoffs.failed("k", "error") for _ in range(2000)]
    assert pauses[:3] == [1e-5, 2e-5, 4e-5]
    # 1e-5 s doubled 33 times is 85 899 s, short of the longest; once more reaches it
    assert pauses[33] == pytest.approx(85899.34592)
    assert pauses[34:] == [86400.0] * (2000 - 34) and drawn[-1] == (43200.0, 86400.0)
    tiny: Backoffs[str, str] = Backoffs(first=1e-4, longest=86400.0, capacity=10,
                                        clock=clock.monotonic, rng=rng)
    assert [tiny.failed("k", "error") for _ in range(31)][-1] == 86400.0


def test_the_tables_are_bounded_forgetting_the_least_recently_used():
    clock = Clock()
    backoffs: Backoffs[int, str] = Backoffs(first=1.0, longest=1.0, capacity=100,
                                            clock=clock.monotonic)
    refusals: Refusals[int, str] = Refusals(ttl=10, capacity=100, clock=clock.monotonic)
    budgets: Budgets[int] = Budgets(rate=1, burst=1, capacity=100, clock=clock.monotonic)
    for key in range(10_000):
        backoffs.failed(key, "e")
        refusals.remember(key, "e")
        budgets.take(key)
    assert len(backoffs) == len(refusals) == 100
    assert backoffs.held(9_999) is not None and backoffs.held(0) is None
    assert budgets.take(0) == 0.0  # forgotten: a fresh bucket


def test_a_refusal_is_kept_for_its_time_and_forgotten_by_tag():
    clock = Clock()
    refusals: Refusals[str, str] = Refusals(ttl=10, capacity=10, clock=clock.monotonic)
    refusals.remember("a", "invalid_client", tag="orders")
    refusals.remember("b", "invalid_client", tag="billing")
    refusals.remember("c", "invalid_scope")
    assert refusals.recall("a").retry_after == 10  # type: ignore[union-attr]
    assert refusals.forget("orders") == 1
    assert refusals.recall("a") is None and refusals.recall("b") is not None
    clock.advance(10)
    assert refusals.recall("b") is None and len(refusals) == 0
    off: Refusals[str, str] = Refusals(ttl=0, capacity=10, clock=clock.monotonic)
    off.remember("a", "invalid_client")
    assert off.recall("a") is None


def test_a_token_bucket_grants_the_burst_then_the_rate():
    clock = Clock()
    budgets: Budgets[str] = Budgets(rate=2.0, burst=4, capacity=10, clock=clock.monotonic)
    assert [budgets.take("a") for _ in range(4)] == [0.0] * 4
    assert budgets.take("a") == pytest.approx(0.5)
    clock.advance(0.25)
    assert budgets.take("a") == pytest.approx(0.25)  # half a token, nothing spent
    clock.advance(0.25)
    assert budgets.take("a") == 0.0
    clock.advance(100)
    assert [budgets.take("a") for _ in range(5)][-1] > 0  # refilled to the burst, no more
    budgets.give_back("b")
    assert budgets.take("b") == 0.0
    with pytest.raises(ValueError, match="rate above 0"):
        Budgets(rate=0, burst=1, capacity=1)


# --- a flight ------------------------------------------------------------------------------


def test_a_flight_calls_each_waiter_once_and_late_joiners_at_once():
    flight: Flight[str, str] = Flight("k", started=0.0, deadline=None, max_waiters=2)
    got: list[tuple[str | None, BaseException | None]] = []
    assert flight.join(lambda r, e: got.append((r, e)))
    assert flight.join(lambda r, e: got.append((r, e)))
    assert not flight.join(lambda r, e: got.append((r, e)))  # full
    assert flight.waiting == 2
    assert flight.succeed("token") and not flight.fail(RuntimeError("late"))
    assert got == [("token", None)] * 2
    assert flight.join(lambda r, e: got.append((r, e)))
    assert got[-1] == ("token", None) and flight.settled


# --- timers --------------------------------------------------------------------------------


def test_timers_run_in_order_a_new_earlier_one_wakes_the_thread_and_cancel_works():
    timers = Timers(name="test-timers")
    ran: list[str] = []
    done = threading.Event()
    now = time.monotonic()
    timers.call_at(now + 60, lambda: ran.append("late"))
    cancelled = timers.call_at(now + 0.05, lambda: ran.append("cancelled"))
    cancelled.cancel()
    timers.call_at(now + 0.02, lambda: (ran.append("soon"), done.set()))
    timers.call_at(now - 1, lambda: ran.append("past"))
    assert done.wait(5)
    wait_until(lambda: len(ran) >= 2, what="both due timers")
    assert sorted(ran) == ["past", "soon"]
    timers.close()
