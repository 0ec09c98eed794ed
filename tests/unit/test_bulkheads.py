"""The bulkheads' parts on a hand-moved clock: the endpoint's circuit (evidence by distinct
clients, half-open probes), per-key back-off, remembered refusals, token buckets, a flight
and its waiters, and the timers that end waits held by no thread."""

from __future__ import annotations

import threading
import time

import pytest

from tests.fakes import Clock
from tests.helpers import wait_until
from token_worker.idp.circuit import CircuitState, EndpointCircuit, Verdict
from token_worker.tokens.flight import Flight
from token_worker.tokens.guards import Backoffs, Budgets, Refusals
from token_worker.tokens.timers import Timers


def circuit(clock: Clock, *, threshold: int = 5, probes: int = 3, cool_down: float = 10.0
            ) -> EndpointCircuit:
    return EndpointCircuit(threshold=threshold, window=30.0, cool_down=cool_down,
                           probes=probes, clock=clock.monotonic)


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
        assert breaker.failed("same", unreachable=True) is False
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failed("same", unreachable=True) is True
    # open, a failure opens nothing again (a call that started before it opened)
    assert breaker.failed("other", unreachable=False) is False
    assert breaker.failed("other", unreachable=True) is False


@pytest.mark.parametrize("unreachable", [False, True])
def test_a_failure_exactly_a_window_ago_still_counts_an_older_one_does_not(unreachable):
    clock = Clock()
    within = circuit(clock, threshold=3)  # idp.failureWindow: 30 s
    within.failed("a", unreachable=unreachable)
    clock.advance(30)
    assert within.failed("b", unreachable=unreachable) is False
    assert within.failed("c", unreachable=unreachable) is True
    older = circuit(clock, threshold=3)
    older.failed("a", unreachable=unreachable)
    clock.advance(30.5)
    assert older.failed("b", unreachable=unreachable) is False
    assert older.failed("c", unreachable=unreachable) is False
    assert older.state is CircuitState.CLOSED


@pytest.mark.parametrize("unreachable", [False, True])
def test_the_largest_threshold_the_config_allows_is_counted_exactly(unreachable):
    clock = Clock()
    breaker = circuit(clock, threshold=1000)  # idp.failureThreshold: at most 1000
    for n in range(999):
        assert breaker.failed(f"client-{n}", unreachable=unreachable) is False
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failed("client-999", unreachable=unreachable) is True
    assert breaker.state is CircuitState.OPEN


def test_threshold_and_probes_must_be_at_least_one():
    for threshold, probes in ((0, 3), (3, 0), (0, 0), (-1, 3), (3, -1)):
        with pytest.raises(ValueError, match="at least 1"):
            EndpointCircuit(threshold=threshold, window=30.0, cool_down=10.0, probes=probes)
    clock = Clock()
    least = circuit(clock, threshold=1, probes=1)
    assert least.failed("a", unreachable=False) is True
    clock.advance(10)
    assert least.acquire() is True and isinstance(least.acquire(), Verdict)  # one probe


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
    assert huge.refusal().retry_after == 300.0  # type: ignore[union-attr]  # README: at most 300


def test_a_cool_down_under_a_second_is_kept_each_time_it_opens():
    clock = Clock()
    breaker = circuit(clock, threshold=1, probes=1, cool_down=0.5)  # idp.coolDown: above 0
    breaker.failed("a", unreachable=False)
    assert breaker.refusal().retry_after == 0.5  # type: ignore[union-attr]
    clock.advance(0.5)
    assert breaker.acquire() is True
    assert breaker.failed("a", unreachable=False, probe=True) is True  # the probe failed
    assert breaker.refusal().retry_after == 0.5  # type: ignore[union-attr]
    clock.advance(0.5)
    assert breaker.acquire() is True
    breaker.answered()
    assert breaker.failed("b", unreachable=False) is True
    assert breaker.refusal().retry_after == 0.5  # type: ignore[union-attr]


def test_the_verdict_counts_the_cool_down_down_to_its_end():
    clock = Clock(mono=2.0)  # time.monotonic() counts from an unspecified point (boot)
    breaker = circuit(clock, threshold=1, cool_down=10.0)
    breaker.failed("a", unreachable=False)
    assert breaker.refusal().retry_after == 10.0  # type: ignore[union-attr]
    clock.advance(9.5)
    assert breaker.refusal().retry_after == 0.5  # type: ignore[union-attr]
    assert breaker.state is CircuitState.OPEN
    clock.advance(1.0)  # past the cool-down, not only at its end
    assert breaker.state is CircuitState.HALF_OPEN and breaker.refusal() is None


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
    breaker.answered()
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


def free_slots(breaker: EndpointCircuit) -> int:
    """Probes that may start now (taking them all)."""
    taken = 0
    while breaker.acquire() is True:
        taken += 1
    return taken


def test_each_probe_gives_back_exactly_its_own_slot():
    clock = Clock()
    breaker = circuit(clock, threshold=1, probes=3)
    breaker.failed("a", unreachable=False)
    clock.advance(10)
    assert free_slots(breaker) == 3
    breaker.no_evidence(probe=True)  # a probe a 429 or its request's deadline cut short
    assert free_slots(breaker) == 1
    for _ in range(3):
        breaker.no_evidence(probe=True)
    assert free_slots(breaker) == 3
    breaker.no_evidence()  # a call that was no probe holds no slot
    assert free_slots(breaker) == 0
    breaker.failed("x", unreachable=False, probe=True)
    breaker.no_evidence(probe=True)
    breaker.no_evidence(probe=True)
    assert free_slots(breaker) == 3
    breaker.no_evidence(probe=True)
    breaker.no_evidence(probe=True)
    breaker.failed("x", unreachable=False, probe=True)  # two of three probes failed
    assert free_slots(breaker) == 3 and breaker.state is CircuitState.HALF_OPEN
    four = circuit(clock, threshold=1, probes=4)
    four.failed("a", unreachable=False)
    clock.advance(10)
    assert free_slots(four) == 4
    four.failed("x", unreachable=False, probe=True)
    assert free_slots(four) == 1
    four.failed("x", unreachable=False, probe=True)
    four.failed("x", unreachable=False, probe=True)
    assert free_slots(four) == 2 and four.state is CircuitState.HALF_OPEN  # 3 of 4 failed


@pytest.mark.parametrize("late", ["no_evidence", "failed"])
def test_a_probe_of_an_earlier_round_reporting_late_frees_no_slot_of_the_next(late):
    clock = Clock()
    breaker = circuit(clock, threshold=1, probes=2)
    breaker.failed("a", unreachable=False)
    clock.advance(10)
    assert breaker.acquire() is True and breaker.acquire() is True  # probes A and B
    breaker.answered()  # A's answer closes it
    breaker.failed("c", unreachable=False)  # and it opens again
    clock.advance(10)
    assert breaker.state is CircuitState.HALF_OPEN  # the next round has begun
    if late == "failed":  # B, a probe of the round before, ends now
        breaker.failed("b", unreachable=False, probe=True)
    else:
        breaker.no_evidence(probe=True)
    assert [breaker.acquire() for _ in range(2)] == [True, True]
    assert isinstance(breaker.acquire(), Verdict)  # idp.halfOpenProbes at once, no more


def test_once_a_probes_answer_closed_it_the_other_probes_failures_do_not_open_it():
    clock = Clock()
    breaker = circuit(clock, threshold=1, probes=2)
    breaker.failed("a", unreachable=False)
    clock.advance(10)
    assert breaker.acquire() is True and breaker.acquire() is True
    breaker.answered()
    assert breaker.failed("b", unreachable=False, probe=True) is False
    assert breaker.state is CircuitState.CLOSED and breaker.openings == 1


def test_a_probe_failing_after_its_round_opened_it_again_restarts_the_cool_down():
    clock = Clock()
    breaker = circuit(clock, threshold=1, probes=2, cool_down=10.0)
    breaker.failed("a", unreachable=False)
    clock.advance(10)
    assert breaker.acquire() is True and breaker.acquire() is True  # probes A and B
    breaker.failed("x", unreachable=False, probe=True)  # A fails: its slot goes to C
    assert breaker.acquire() is True
    assert breaker.failed("x", unreachable=False, probe=True) is True  # B: both failed
    clock.advance(5)
    breaker.failed("x", unreachable=False, probe=True)  # C fails: the endpoint still fails
    clock.advance(5)
    assert breaker.state is CircuitState.OPEN
    assert breaker.refusal().retry_after == 5.0  # type: ignore[union-attr]
    clock.advance(5)
    assert breaker.state is CircuitState.HALF_OPEN


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


def test_a_hold_ends_at_its_moment_and_stays_ended():
    clock = Clock()
    backoffs: Backoffs[str, str] = Backoffs(first=1.0, longest=8.0, capacity=10,
                                            clock=clock.monotonic, rng=lambda low, high: high)
    assert backoffs.failed("k", "error") == 1.0
    clock.advance(0.75)
    held = backoffs.held("k")
    assert held is not None and held.retry_after == 0.25 and len(backoffs) == 1
    clock.advance(0.25)
    assert backoffs.held("k") is None and len(backoffs) == 0
    clock.advance(1.0)
    assert backoffs.held("k") is None and len(backoffs) == 0


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
    clock.advance(1.0)
    assert refusals.recall("b") is None and len(refusals) == 0
    off: Refusals[str, str] = Refusals(ttl=0, capacity=10, clock=clock.monotonic)
    off.remember("a", "invalid_client", tag="orders")
    assert off.recall("a") is None
    assert off.forget("orders") == 0  # idp.refusalMemory 0: off, nothing kept


def test_a_refusal_is_kept_to_the_end_of_its_time_even_under_a_second():
    clock = Clock()
    refusals: Refusals[str, str] = Refusals(ttl=0.5, capacity=10, clock=clock.monotonic)
    refusals.remember("a", "invalid_client")
    clock.advance(0.25)
    assert refusals.recall("a").retry_after == 0.25  # type: ignore[union-attr]
    long: Refusals[str, str] = Refusals(ttl=10, capacity=10, clock=clock.monotonic)
    long.remember("a", "invalid_client")
    clock.advance(9.5)
    assert long.recall("a").retry_after == 0.5  # type: ignore[union-attr]


def test_a_rotation_forgets_by_the_credentials_name_not_by_the_same_string_object():
    clock = Clock()
    refusals: Refusals[str, str] = Refusals(ttl=10, capacity=10, clock=clock.monotonic)
    named = "".join(["ord", "ers"])  # a name read from a request, another from the directory
    refusals.remember("a", "invalid_client", tag=named)
    assert refusals.forget("".join(["or", "ders"])) == 1
    assert refusals.recall("a") is None


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
    # idp.clientRate: above 0; idp.clientBurst: at least 1
    for rate, burst in ((0, 1), (-1, 1), (1, 0), (1, -1), (1, 0.5)):
        with pytest.raises(ValueError, match="rate above 0"):
            Budgets(rate=rate, burst=burst, capacity=1)
    Budgets(rate=0.001, burst=1, capacity=1)


def test_a_call_given_back_is_one_call_on_top_of_what_the_time_refilled():
    clock = Clock(mono=1.0)  # time.monotonic() counts from an unspecified point (boot)
    budgets: Budgets[str] = Budgets(rate=0.5, burst=4, capacity=10, clock=clock.monotonic)
    assert [budgets.take("a") for _ in range(4)] == [0.0] * 4  # the burst, spent
    single: Budgets[str] = Budgets(rate=1.0, burst=1, capacity=10, clock=clock.monotonic)
    assert single.take("b") == 0.0
    clock.advance(1.0)
    assert single.take("b") == 0.0  # one second refilled one call
    budgets.give_back("a")  # half a call refilled, and one call not made after all: 1.5
    assert budgets.take("a") == 0.0  # 0.5 left
    assert budgets.take("a") == 1.0  # half a call short: 1 s at 0.5 a second


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
