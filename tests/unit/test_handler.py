"""The handler contract with no servers: a real broker and cache in front of a scripted IdP."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import orjson

from tests.fakes import FakeIssuer
from tests.helpers import wait_until
from token_worker import wire
from token_worker.errors import IdpRefused, IdpUnavailable
from token_worker.metrics import Metrics
from token_worker.serve.handler import BytesHandler, Deferred, Reply
from token_worker.serve.token_handler import TokenHandler
from token_worker.tokens.broker import TokenBroker
from token_worker.tokens.cache import TokenCache

LIMIT = 64 * 1024


def make(idp: FakeIssuer | None = None, *, cache: bool = True
         ) -> tuple[TokenHandler, FakeIssuer, Metrics]:
    idp = idp or FakeIssuer()
    metrics = Metrics()
    token_cache = TokenCache(max_entries=10, expiry_margin=30, refresh_ahead=0.2,
                             now=time.time) if cache else None
    broker = TokenBroker(idp, token_cache, auth_method="client_secret_post",
                         follower_timeout=5, metrics=metrics)
    return TokenHandler(broker, default_scope="openid profile", max_payload=LIMIT), idp, metrics


def request(request_id: str = "r-1", **extra: object) -> bytes:
    return json.dumps({"request_id": request_id, "client_id": "svc",
                       "client_secret": "pw-secret", **extra}).encode()


def cache_events(metrics: Metrics) -> dict[str, float]:
    sample = metrics.registry.get_sample_value
    return {event: sample("token_worker_cache_events_total", {"event": event}) or 0.0
            for event in ("hit", "miss")}


def test_a_miss_is_deferred_with_the_parsed_request_then_a_hit_is_answered_now():
    handler, idp, metrics = make()

    first = handler.handle(request("miss"))
    assert isinstance(first, Deferred)
    assert first.request.client_id == "svc" and first.request_id == "miss"
    assert idp.calls == 0  # nothing done on the reader thread but the lookup
    served = first.run()
    assert served.error_code == "" and served.client_id == "svc"
    assert orjson.loads(served.body)["token_source"] == "idp"

    second = handler.handle(request("hit"))
    assert isinstance(second, Reply)
    body = orjson.loads(second.body)
    assert (body["request_id"], body["access_token"], body["token_source"]) == (
        "hit", "token-1", "cache")
    assert idp.calls == 1
    assert cache_events(metrics) == {"hit": 1.0, "miss": 1.0}  # the miss counted once


def test_skip_cache_is_deferred_without_a_lookup():
    handler, _, metrics = make()
    handler.handle(request()).run()
    outcome = handler.handle(request(skip_cache=True))
    assert isinstance(outcome, Deferred)
    assert orjson.loads(outcome.run().body)["access_token"] == "token-2"
    assert cache_events(metrics) == {"hit": 0.0, "miss": 1.0}


def test_an_invalid_request_is_answered_now_with_its_code():
    handler, idp, _ = make()
    reply = handler.handle(b'{"request_id": "bad", "client_id": 5}')
    assert isinstance(reply, Reply)
    assert reply.error_code == wire.INVALID_REQUEST
    assert reply.request_id == "bad"
    body = orjson.loads(reply.body)
    assert body["error_code"] == "invalid_request" and "client_id" in body["error"]
    assert idp.calls == 0


def test_idp_errors_become_error_replies_carrying_the_code():
    refused, _, _ = make(FakeIssuer(error=IdpRefused("invalid_client", description="who?")))
    outcome = refused.handle(request())
    assert isinstance(outcome, Deferred)
    reply = outcome.run()
    assert reply.error_code == "invalid_client"
    assert orjson.loads(reply.body)["error_description"] == "who?"

    down, _, _ = make(FakeIssuer(error=IdpUnavailable("connection refused")))
    reply = down.handle(request()).run()  # type: ignore[union-attr]
    assert reply.error_code == wire.IDP_UNAVAILABLE


def test_without_a_cache_every_request_is_deferred():
    handler, idp, metrics = make(cache=False)
    for _ in range(2):
        outcome = handler.handle(request())
        assert isinstance(outcome, Deferred)
        outcome.run()
    assert idp.calls == 2
    assert cache_events(metrics) == {"hit": 0.0, "miss": 0.0}


def test_a_bytes_function_becomes_a_handler_that_always_defers():
    handler = BytesHandler(lambda payload: payload.upper())
    outcome = handler.handle(b"abc")
    assert isinstance(outcome, Deferred)
    assert outcome.request_id is None  # not read: the worker peeks only if it must
    assert outcome.run() == Reply(b"ABC")


def test_a_miss_that_starts_after_the_first_one_finished_shares_its_answer():
    handler, idp, metrics = make()
    first, second = handler.handle(request("a")), handler.handle(request("b"))
    assert isinstance(first, Deferred) and isinstance(second, Deferred)
    first_reply = first.run()  # finished (and cached) before the second starts
    second_reply = second.run()
    assert idp.calls == 1
    tokens = {orjson.loads(r.body)["access_token"] for r in (first_reply, second_reply)}
    assert tokens == {"token-1"}
    assert orjson.loads(second_reply.body)["request_id"] == "b"
    assert cache_events(metrics) == {"hit": 0.0, "miss": 2.0}  # two requests, one each
    third = handler.handle(request("c"))
    assert isinstance(third, Reply)  # and the next one is a hit


def waiting_in(thread: threading.Thread, function: str) -> bool:
    """Whether ``thread`` is inside a call of ``function`` (a future's ``result``)."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def run_together(first: Deferred[Any], second: Deferred[Any], idp: FakeIssuer) -> list[Reply]:
    """``first`` calls the IdP; ``second`` starts while that call is under way."""
    replies: dict[int, Reply] = {}
    threads = [threading.Thread(target=lambda: replies.__setitem__(0, first.run()))]
    threads[0].start()
    assert idp.entered.wait(5)
    threads.append(threading.Thread(target=lambda: replies.__setitem__(1, second.run())))
    threads[1].start()
    wait_until(lambda: waiting_in(threads[1], "result"), timeout=5,
               what="the second miss waiting for the first one's call")
    idp.gate.set()
    for thread in threads:
        thread.join(10)
    return [replies[0], replies[1]]


def test_a_miss_joins_the_call_under_way_and_shares_its_error_then_the_next_asks_again():
    idp = FakeIssuer(error=IdpUnavailable("connection refused"))
    idp.gate = threading.Event()
    failing, _, _ = make(idp)
    first, second = failing.handle(request("a")), failing.handle(request("b"))
    assert isinstance(first, Deferred) and isinstance(second, Deferred)
    replies = run_together(first, second, idp)
    assert [reply.error_code for reply in replies] == [wire.IDP_UNAVAILABLE] * 2
    assert idp.calls == 1
    third = failing.handle(request("c"))  # errors are not cached: a later miss asks again
    assert isinstance(third, Deferred)
    assert third.run().error_code == wire.IDP_UNAVAILABLE
    assert idp.calls == 2


def test_a_request_is_due_one_idp_deadline_after_it_arrived():
    idp = FakeIssuer()
    broker = TokenBroker(idp, None, auth_method="client_secret_post", follower_timeout=5)
    handler = TokenHandler(broker, default_scope="openid", max_payload=LIMIT, deadline=8.0)
    arrived = time.monotonic()
    deferred = handler.handle(request("a"))
    assert isinstance(deferred, Deferred)
    time.sleep(0.05)  # queued for a pool thread: that time counts against the deadline
    deferred.run()
    deadline = idp.deadlines[0]
    assert deadline is not None
    assert arrived + 8.0 <= deadline <= arrived + 8.0 + 0.04


def test_an_unsent_token_reply_leaves_the_cache():
    handler, idp, _ = make()
    miss = handler.handle(request("a"))
    assert isinstance(miss, Deferred)
    sent = miss.run()
    hit = handler.handle(request("b"))
    assert isinstance(hit, Reply)
    handler.unsent(hit)  # the worker answered token_too_large instead
    again = handler.handle(request("c"))
    assert isinstance(again, Deferred)
    assert orjson.loads(again.run().body)["access_token"] != orjson.loads(sent.body)[
        "access_token"]
    assert idp.calls == 2
