"""The requester's attempts against a scripted responder (no server): which answers end a
call, which are asked again, and within which budget."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from tests.fakes import Clock
from token_worker.client import requester as requester_module
from token_worker.client import retries as retries_module
from token_worker.client.inbox import Inbox
from token_worker.client.requester import Requester
from token_worker.errors import NoWorkerAnswered
from token_worker.nats.link import State
from token_worker.nats.protocol import Message
from token_worker.nats.replies import ReplyMux
from token_worker.wire import OVERLOADED, SHUTTING_DOWN

Answer = Callable[[str], list[Message]]
"""What the scripted fleet sends back for one attempt, given its reply subject."""


class ScriptedFleet:
    """Stands in for the connection: each publish is answered by the next script entry
    (the last one repeats), delivered to the reply space's subscription as the reader
    thread would."""

    max_payload = 1024 * 1024
    state = State.CONNECTED
    gave_up_reason = ""

    def __init__(self, *answers: Answer) -> None:
        self._answers = list(answers)
        self._deliver: Callable[[Message], None] | None = None
        self.sent: list[dict[str, Any]] = []

    def subscribe(self, subject: str, callback: Callable[[Message], None],
                  queue: str = "") -> None:
        self._deliver = callback

    def on_reader_thread(self) -> bool:
        return False

    def publish(self, subject: str, payload: bytes, reply: str = "", *,
                headers: dict[str, str] | None = None) -> None:
        self.sent.append(json.loads(payload))
        answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        assert self._deliver is not None
        for message in answer(reply):
            self._deliver(message)


def error(code: str) -> Answer:
    return lambda reply: [Message(reply, "", json.dumps(
        {"request_id": "r", "error": f"worker says {code}", "error_code": code}).encode())]


def token(reply: str) -> list[Message]:
    return [Message(reply, "", json.dumps({"request_id": "r", "access_token": "genuine",
                                           "token_type": "Bearer", "expires_in": 60}).encode())]


def no_responders(reply: str) -> list[Message]:
    return [Message(reply, "", b"", status=503)]


def silence(_reply: str) -> list[Message]:
    return []


class Pauses(threading.Event):
    """The client's ``closed`` event, on which the requester pauses between attempts: each
    pause is recorded and moves ``clock`` instead of being slept."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.taken: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.taken.append(timeout or 0.0)
        self.clock.advance(timeout or 0.0)
        return self.is_set()


@pytest.fixture
def requester_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The requester's monotonic clock (its budgets), moved only by its pauses."""
    clock = Clock()
    for module in (requester_module, retries_module):
        monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


def run(*answers: Answer, retries: int = 2, timeout: float = 1.0, budget: float = 5.0,
        clock: Clock | None = None) -> tuple[dict[str, Any], ScriptedFleet, list[float]]:
    """One call; with ``clock``, its pauses are recorded (not slept) and returned; with
    ``requester_clock`` as well, the call's budget runs on that clock."""
    fleet = ScriptedFleet(*answers)
    inbox = Inbox(ReplyMux(fleet, "_INBOX"), 4096)
    closed = threading.Event() if clock is None else Pauses(clock)
    requester = Requester(fleet, inbox, closed,  # type: ignore[arg-type]
                          timeout=timeout, retries=retries)
    reply = requester.send("token.request", b'{"request_id": "r"}', "r", None, budget)
    return reply, fleet, closed.taken if isinstance(closed, Pauses) else []


def test_shutting_down_is_asked_again_at_once_with_the_same_request_id(requester_clock):
    reply, fleet, pauses = run(error(SHUTTING_DOWN), error(SHUTTING_DOWN), token, retries=1,
                               clock=requester_clock)
    assert reply["access_token"] == "genuine"
    assert len(fleet.sent) == 3  # neither counts against retries=1
    assert {body["request_id"] for body in fleet.sent} == {"r"}
    assert pauses[0] == 0.0 and 0 < pauses[1] <= retries_module.BACKOFF_FIRST
    # the first again at once, the second after a short back-off


def test_overloaded_is_asked_again_after_a_short_back_off(requester_clock):
    reply, fleet, pauses = run(error(OVERLOADED), error(OVERLOADED), token,
                               clock=requester_clock)
    assert reply["access_token"] == "genuine"
    assert len(fleet.sent) == 3
    first = retries_module.BACKOFF_FIRST
    assert first / 2 <= pauses[0] <= first <= pauses[1] <= 2 * first  # doubling


@pytest.mark.parametrize("code", [SHUTTING_DOWN, OVERLOADED])
def test_a_fleet_turning_away_for_the_whole_budget_gets_its_answer_back(code, requester_clock):
    reply, fleet, pauses = run(error(code), budget=1.0, clock=requester_clock)
    assert reply["error_code"] == code  # the worker's own answer, not a timeout
    assert len(fleet.sent) > 3
    assert sum(pauses) <= 1.0  # every pause within the budget, none past it


def test_other_error_replies_are_final():
    reply, fleet, _ = run(error("invalid_client"), token)
    assert reply["error_code"] == "invalid_client" and len(fleet.sent) == 1


def test_retries_zero_asks_once_even_when_turned_away():
    reply, fleet, _ = run(error(SHUTTING_DOWN), token, retries=0)
    assert reply["error_code"] == SHUTTING_DOWN and len(fleet.sent) == 1


def test_a_forged_503_only_causes_a_retry():
    """A rogue queue member answering a 503 status ends that attempt, never the call: the
    next attempt reaches the genuine worker."""
    reply, fleet, _ = run(no_responders, no_responders, token, retries=1)
    assert reply["access_token"] == "genuine" and len(fleet.sent) == 3


def test_a_503_after_someone_answered_starts_a_fresh_no_worker_window():
    """A 503 after an attempt that reached a worker does not inherit an old window: a rogue
    sprinkling 503s between silent or busy answers cannot end the call before its budget."""
    script = [no_responders, error(OVERLOADED)] * 6 + [token]
    reply, fleet, _ = run(*script, timeout=0.2, budget=10.0)
    assert reply["access_token"] == "genuine" and len(fleet.sent) == 13


def forged(reply: str) -> list[Message]:
    return [Message(reply, "", json.dumps({"request_id": "someone-else",
                                           "access_token": "forged", "token_type": "Bearer",
                                           "expires_in": 60}).encode())]


def test_an_attempt_that_only_got_a_forgery_is_asked_again_at_once():
    """The genuine reply may have gone to a rogue: no back-off after the attempt's timeout
    (a silent one waits a short jittered pause instead). The attempts wait out their real
    0.1 s; the pauses are recorded, not slept."""
    reply, fleet, pauses = run(forged, token, retries=1, timeout=0.1, clock=Clock())
    assert reply["access_token"] == "genuine" and len(fleet.sent) == 2
    assert pauses == [0.0]
    reply, fleet, pauses = run(silence, token, retries=1, timeout=0.1, clock=Clock())
    assert reply["access_token"] == "genuine" and len(pauses) == 1 and pauses[0] > 0


@pytest.mark.parametrize("answer", [no_responders, error(OVERLOADED)])
def test_answers_that_come_at_once_are_asked_again_until_the_end_of_the_budget(
        answer, requester_clock):
    """The last back-off is cut so that one more attempt fits: the call asks for its whole
    budget, not until the next doubled pause would overshoot it."""
    fleet = ScriptedFleet(answer)
    closed = Pauses(requester_clock)
    requester = Requester(fleet, Inbox(ReplyMux(fleet, "_INBOX"), 4096),  # type: ignore[arg-type]
                          closed, timeout=1.0, retries=2)
    with contextlib.suppress(NoWorkerAnswered):  # no responders: said when the budget ends
        requester.send("token.request", b'{"request_id": "r"}', "r", None, 1.0)
    assert sum(closed.taken) == pytest.approx(1.0 - retries_module.LAST_ATTEMPT)
    assert len(fleet.sent) == len(closed.taken) + 1
