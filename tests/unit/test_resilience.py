"""The resilient IdP on a hand-moved clock, over a scripted client (no HTTP): what each
attempt tells the endpoint's circuit, the time a fetch needs, the call ceiling, and the
probes after a cool-down."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.fakes import Clock
from token_worker.config import IdpConfig
from token_worker.errors import (
    CircuitOpen,
    IdpBadResponse,
    IdpError,
    IdpRefused,
    IdpTimeout,
    IdpUnavailable,
    Overloaded,
)
from token_worker.idp.circuit import CircuitState
from token_worker.idp.resilience import ResilientIdp
from token_worker.tokens.model import IssuedToken


class ScriptedClient:
    """What :class:`ResilientIdp` asks of the IdP client: each call takes ``took`` seconds on
    the clock and answers the next scripted outcome (an error to raise, or a token)."""

    token_url = known_token_url = "https://idp.test/token"

    def __init__(self, clock: Clock, *outcomes: IdpError | None, took: float = 0.1) -> None:
        self.clock = clock
        self.outcomes = list(outcomes)
        self.took = took
        self.timeouts: list[float] = []

    def fetch_token(self, client_id: str, client_secret: str, scope: str, *,
                    timeout: float | None = None,
                    auth_method: str | None = None) -> IssuedToken:
        self.timeouts.append(timeout or 0.0)
        self.clock.advance(self.took)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        return IssuedToken("token", "Bearer", 300, scope, self.clock.wall)


def resilient(client: ScriptedClient, clock: Clock,
              sleep: Callable[[float], None] | None = None, **settings: object
              ) -> ResilientIdp:
    config = IdpConfig(url="https://idp.test", **{"timeout": 4.0, "deadline": 8.0,  # type: ignore[arg-type]
                                                  "failure_threshold": 3, **settings})
    return ResilientIdp(client, config, clock=clock.monotonic,  # type: ignore[arg-type]
                        sleep=sleep or clock.advance, rng=lambda low, high: high)


def http_500() -> IdpUnavailable:
    return IdpUnavailable("HTTP 500", status=500, reason="HTTP 500")


def test_a_clients_5xx_counts_for_that_client_only():
    clock = Clock()
    client = ScriptedClient(clock, *[http_500()] * 9)
    idp = resilient(client, clock)
    for _ in range(3):  # three fetches of one client, three attempts each
        with pytest.raises(IdpUnavailable):
            idp.fetch_token("noisy", "s", "", deadline=clock.mono + 8)
    assert len(client.timeouts) == 9 and idp.calls == 9  # attempts, retries included
    assert idp.circuit.state is CircuitState.CLOSED
    assert idp.refusal("other") is None


def test_5xx_for_three_clients_opens_it_and_nobody_is_asked():
    clock = Clock()
    client = ScriptedClient(clock, *[http_500()] * 9)
    idp = resilient(client, clock)
    for name in ("a", "b", "c"):
        with pytest.raises(IdpUnavailable):
            idp.fetch_token(name, "s", "")
    refused = idp.refusal("d")
    assert isinstance(refused, CircuitOpen) and refused.retry_after
    assert "failures for 3 different clients" in str(refused)
    calls = len(client.timeouts)
    with pytest.raises(CircuitOpen):
        idp.fetch_token("d", "s", "")
    assert len(client.timeouts) == calls
    assert idp.failing_fast


@pytest.mark.parametrize("answer", [
    IdpRefused("invalid_client", status=401), IdpBadResponse("not JSON", status=200)])
def test_a_refusal_or_an_unusable_answer_proves_the_endpoint_answers(answer):
    clock = Clock()
    client = ScriptedClient(clock, http_500(), http_500(), answer, *[http_500()] * 3)
    idp = resilient(client, clock, failure_threshold=2)
    with pytest.raises(type(answer)):
        idp.fetch_token("a", "s", "")  # two 500s, then the endpoint answered
    with pytest.raises(IdpUnavailable):
        idp.fetch_token("b", "s", "")
    # the answer in between closed the count: a and b are not two failing clients in a row
    assert idp.circuit.state is CircuitState.CLOSED


def test_a_timeout_with_the_time_a_fresh_request_gets_is_evidence_one_cut_short_is_not():
    clock = Clock()
    hang = IdpTimeout("no complete answer within 4 s")
    client = ScriptedClient(clock, hang, hang, hang, took=4.0)
    idp = resilient(client, clock, failure_threshold=1)
    with pytest.raises(IdpTimeout) as cut:
        idp.fetch_token("late", "s", "", deadline=clock.mono + 1.5)  # waited 6.5 s already
    assert cut.value.cut_short and client.timeouts == [1.5]
    assert idp.circuit.state is CircuitState.CLOSED
    with pytest.raises(IdpTimeout) as full:
        idp.fetch_token("fresh", "s", "", deadline=clock.mono + 8)
    assert not full.value.cut_short and client.timeouts[1] == 4.0
    assert idp.circuit.state is CircuitState.OPEN  # threshold 1: one client hanging fully


def test_a_timeout_with_exactly_half_a_fresh_requests_time_is_evidence():
    clock = Clock()
    hang = IdpTimeout("no complete answer within 2 s")
    client = ScriptedClient(clock, hang, took=2.0)
    idp = resilient(client, clock, failure_threshold=1)  # a fresh request: 4 s
    with pytest.raises(IdpTimeout) as full:
        idp.fetch_token("half", "s", "", deadline=clock.mono + 2.0)
    assert client.timeouts == [2.0] and not full.value.cut_short
    assert idp.circuit.state is CircuitState.OPEN


def test_the_circuit_opening_is_logged_with_its_evidence_and_cool_down(caplog):
    clock = Clock()
    idp = resilient(ScriptedClient(clock, http_500()), clock, failure_threshold=1,
                    cool_down=2.34)
    with (caplog.at_level("WARNING", logger="token_worker.idp.resilience"),
          pytest.raises(IdpUnavailable)):
        idp.fetch_token("a", "s", "")
    [line] = [r for r in caplog.records if r.message == "idp circuit opened: failing fast"]
    assert line.evidence == "failures for 1 different clients in 30 s"  # type: ignore[attr-defined]
    assert line.open_s == 2.3  # type: ignore[attr-defined]  # seconds, to a tenth


def test_a_429_says_nothing_about_the_endpoint():
    clock = Clock()
    limited = IdpUnavailable("HTTP 429", status=429, retry_after=1)
    client = ScriptedClient(clock, *[limited] * 9)
    idp = resilient(client, clock, failure_threshold=1)
    for name in ("a", "b", "c"):
        with pytest.raises(IdpUnavailable):
            idp.fetch_token(name, "s", "")
    assert idp.circuit.state is CircuitState.CLOSED


def test_the_time_a_fetch_needs_follows_the_idps_slow_answers_within_bounds():
    clock = Clock()
    idp = resilient(ScriptedClient(clock, took=1.0), clock)
    assert idp.time_needed() == 0.25  # nothing known yet: the floor
    for _ in range(10):
        idp.fetch_token("c", "s", "")
    assert idp.time_needed() == pytest.approx(1.5)  # 1.5 x the slow answers
    slow = resilient(ScriptedClient(clock, took=3.5), clock)
    for _ in range(10):
        slow.fetch_token("c", "s", "")
    assert slow.time_needed() == pytest.approx(2.0)  # at most half a fresh request's time
    longer = resilient(ScriptedClient(clock, took=3.5), clock, timeout=6.0)
    for _ in range(10):
        longer.fetch_token("c", "s", "")
    assert longer.time_needed() == pytest.approx(3.0)  # half of idp.timeout, 6 s


def test_the_slowest_tenth_of_the_answers_decides_the_time_a_fetch_needs():
    clock = Clock()
    client = ScriptedClient(clock)
    idp = resilient(client, clock)
    for n in range(1, 21):  # 20 answers, 0.05 s to 1 s: the slowest tenth is 0.95 and 1 s
        client.took = 0.05 * n
        idp.fetch_token("c", "s", "")
    assert idp.time_needed() == pytest.approx(1.5 * 0.95)


def test_the_last_32_answers_decide_the_time_a_fetch_needs():
    clock = Clock()
    client = ScriptedClient(clock, took=1.2)
    idp = resilient(client, clock)
    for _ in range(32):
        idp.fetch_token("c", "s", "")
    assert idp.time_needed() == pytest.approx(1.8)
    client.took = 0.1
    for _ in range(28):
        idp.fetch_token("c", "s", "")
    assert idp.time_needed() == pytest.approx(1.8)  # 4 slow answers of the last 32: a tenth
    idp.fetch_token("c", "s", "")
    assert idp.time_needed() == 0.25  # 3 of 32: fast answers decide, the floor wins


def test_an_attempt_starts_with_at_least_50_ms_left_never_with_less():
    clock = Clock(mono=0.0)  # from 0, so that 0.05 s left is exactly 0.05
    client = ScriptedClient(clock, took=0.0)
    idp = resilient(client, clock)
    idp.fetch_token("c", "s", "", deadline=clock.mono + 0.05)
    assert client.timeouts == [0.05]
    with pytest.raises(IdpTimeout, match="no time left") as late:
        idp.fetch_token("c", "s", "", deadline=clock.mono + 0.04)
    assert client.timeouts == [0.05]  # not called
    assert late.value.attempted is False  # no evidence against the client
    assert idp.circuit.state is CircuitState.CLOSED


def test_the_call_ceiling_answers_overloaded_without_a_call():
    clock = Clock()
    client = ScriptedClient(clock, took=0.0)
    idp = resilient(client, clock, max_calls_per_second=5)
    for n in range(5):
        idp.fetch_token(f"client-{n}", "s", "")
    with pytest.raises(Overloaded, match="ceiling of 5 identity provider calls a second") as over:
        idp.fetch_token("client-5", "s", "")
    assert over.value.retry_after == pytest.approx(0.2)
    assert len(client.timeouts) == 5
    clock.advance(0.2)
    idp.fetch_token("client-5", "s", "")


def test_after_the_cool_down_a_probe_that_gets_an_answer_closes_it():
    clock = Clock()
    client = ScriptedClient(clock, *[http_500()] * 3, None)
    idp = resilient(client, clock, failure_threshold=1, cool_down=10, half_open_probes=3)
    with pytest.raises(IdpUnavailable):
        idp.fetch_token("a", "s", "")
    assert idp.circuit.state is CircuitState.OPEN
    clock.advance(10)
    assert idp.circuit.state is CircuitState.HALF_OPEN
    assert idp.fetch_token("b", "s", "").access_token == "token"
    assert idp.circuit.state is CircuitState.CLOSED
