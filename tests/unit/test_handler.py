"""The handler contract with no servers: a real broker and cache in front of the fake IdP,
the worker's pool played by :class:`~tests.fakes.HeldWork` (the test runs its tasks)."""

from __future__ import annotations

import json

import orjson

from tests.fakes import Clock, FakeIssuer, HeldWork
from token_worker import wire
from token_worker.errors import IdpRefused, IdpUnavailable
from token_worker.metrics import Metrics
from token_worker.nats.protocol import Message
from token_worker.serve.handler import BytesHandler, Deferred, Reply, Waiting
from token_worker.serve.token_handler import TokenHandler
from token_worker.tokens.broker import TokenBroker
from token_worker.tokens.bulkheads import Guards
from token_worker.tokens.cache import TokenCache

LIMIT = 64 * 1024


class Handler:
    """A token handler, its fake IdP, pool, clock and metrics."""

    def __init__(self, idp: FakeIssuer | None = None, *, cache: bool = True,
                 deadline: float | None = 8.0) -> None:
        self.clock = Clock()
        self.idp = idp or FakeIssuer()
        self.metrics = Metrics()
        self.work = HeldWork()
        token_cache = TokenCache(max_entries=10, expiry_margin=30, refresh_ahead=0.2,
                                 now=self.clock) if cache else None
        self.broker = TokenBroker(self.idp, token_cache, auth_method="client_secret_post",
                                  metrics=self.metrics, work=self.work,
                                  guards=Guards.from_defaults(clock=self.clock.monotonic),
                                  clock=self.clock.monotonic)
        self.handler = TokenHandler(self.broker, default_scope="openid profile",
                                    max_payload=LIMIT, deadline=deadline,
                                    clock=self.clock.monotonic)

    def handle(self, payload: bytes) -> Reply | Deferred[object] | Waiting:
        return self.handler.handle_message(Message("token.request", "_INBOX.r", payload))


def request(request_id: str = "r-1", **extra: object) -> bytes:
    return json.dumps({"request_id": request_id, "client_id": "svc",
                       "client_secret": "pw-secret", **extra}).encode()


def replies(*waiting: Reply | Deferred[object] | Waiting) -> list[Reply]:
    """What each :class:`Waiting` was resolved with (run the pool first)."""
    got: list[Reply] = []
    for outcome in waiting:
        assert isinstance(outcome, Waiting), outcome
        outcome.then(got.append)
    assert len(got) == len(waiting), "not every request was answered"
    return got


def cache_events(metrics: Metrics) -> dict[str, float]:
    sample = metrics.registry.get_sample_value
    return {event: sample("token_worker_cache_events_total", {"event": event}) or 0.0
            for event in ("hit", "miss")}


def test_a_miss_waits_for_the_fetch_then_a_hit_is_answered_now():
    made = Handler()
    first = made.handle(request("miss"))
    assert isinstance(first, Waiting) and first.request_id == "miss"
    assert made.idp.calls == 0  # nothing done on the reader thread but the lookup
    assert made.work.run_all() == 1
    [served] = replies(first)
    assert served.error_code == "" and served.client_id == "svc"
    assert orjson.loads(served.body)["token_source"] == "idp"

    second = made.handle(request("hit"))
    assert isinstance(second, Reply)
    body = orjson.loads(second.body)
    assert (body["request_id"], body["access_token"], body["token_source"]) == (
        "hit", "token-1", "cache")
    assert made.idp.calls == 1
    assert cache_events(made.metrics) == {"hit": 1.0, "miss": 1.0}  # the miss counted once


def test_misses_for_one_key_cost_one_pool_task_and_get_their_own_request_ids():
    made = Handler()
    waiting = [made.handle(request(f"r-{n}")) for n in range(50)]
    assert made.work.submitted == 1
    made.work.run_all()
    bodies = [orjson.loads(reply.body) for reply in replies(*waiting)]
    assert [body["request_id"] for body in bodies] == [f"r-{n}" for n in range(50)]
    assert {body["access_token"] for body in bodies} == {"token-1"}
    assert made.idp.calls == 1


def test_skip_cache_goes_to_the_idp_without_a_lookup():
    made = Handler()
    made.handle(request())
    made.work.run_all()
    outcome = made.handle(request(skip_cache=True))
    made.work.run_all()
    [reply] = replies(outcome)
    assert orjson.loads(reply.body)["access_token"] == "token-2"
    assert cache_events(made.metrics) == {"hit": 0.0, "miss": 1.0}


def test_an_invalid_request_is_answered_now_with_its_code():
    made = Handler()
    reply = made.handle(b'{"request_id": "bad", "client_id": 5}')
    assert isinstance(reply, Reply)
    assert reply.error_code == wire.INVALID_REQUEST
    assert reply.request_id == "bad"
    body = orjson.loads(reply.body)
    assert body["error_code"] == "invalid_request" and "client_id" in body["error"]
    assert made.idp.calls == 0


def test_idp_errors_become_error_replies_carrying_the_code():
    refused = Handler(FakeIssuer(error=IdpRefused("invalid_client", description="who?")))
    outcome = refused.handle(request())
    refused.work.run_all()
    [reply] = replies(outcome)
    assert reply.error_code == "invalid_client"
    assert orjson.loads(reply.body)["error_description"] == "who?"

    down = Handler(FakeIssuer(error=IdpUnavailable("connection refused")))
    outcome = down.handle(request())
    down.work.run_all()
    [reply] = replies(outcome)
    assert reply.error_code == wire.IDP_UNAVAILABLE


def test_a_remembered_refusal_and_a_back_off_are_answered_now_with_retry_after():
    made = Handler(FakeIssuer(error=IdpRefused("invalid_client", status=401)))
    made.handle(request("first"))
    made.work.run_all()
    again = made.handle(request("again"))
    assert isinstance(again, Reply)  # from memory, on the reader thread
    body = orjson.loads(again.body)
    assert (body["error_code"], body["request_id"], body["retry_after"]) == (
        "invalid_client", "again", 10)
    assert made.idp.calls == 1

    failing = Handler(FakeIssuer(error=IdpUnavailable("HTTP 500", status=500)))
    failing.handle(request("first"))
    failing.work.run_all()
    held = failing.handle(request("held"))
    assert isinstance(held, Reply)
    assert orjson.loads(held.body)["retry_after"] >= 1
    assert failing.idp.calls == 1


def test_skip_cache_past_the_clients_budget_serves_the_cached_token_saying_so():
    made = Handler()
    made.handle(request())
    made.work.run_all()
    for _ in range(9):  # the burst (10) spent, the first call included
        made.handle(request(skip_cache=True))
        made.work.run_all()
    refused = made.handle(request("over", skip_cache=True))
    assert isinstance(refused, Reply)
    body = orjson.loads(refused.body)
    assert (body["token_source"], body["fetch_refused"]) == ("cache", "rate_limited")
    assert made.idp.calls == 10


def test_without_a_cache_every_request_waits_for_its_fetch():
    made = Handler(cache=False)
    for _ in range(2):
        outcome = made.handle(request())
        assert isinstance(outcome, Waiting)
        made.work.run_all()
    assert made.idp.calls == 2
    assert cache_events(made.metrics) == {"hit": 0.0, "miss": 0.0}


def test_a_bytes_function_becomes_a_handler_that_always_defers():
    handler = BytesHandler(lambda payload: payload.upper())
    outcome = handler.handle(b"abc")
    assert isinstance(outcome, Deferred)
    assert outcome.request_id is None  # not read: the worker peeks only if it must
    assert outcome.run() == Reply(b"ABC")
    assert handler.handle_message(Message("s", "r", b"x")).run() == Reply(b"X")


def test_a_miss_after_the_first_one_finished_is_a_hit_and_errors_are_not_cached():
    made = Handler()
    first = made.handle(request("a"))
    made.work.run_all()
    replies(first)
    assert isinstance(made.handle(request("b")), Reply)
    failing = Handler(FakeIssuer(error=IdpUnavailable("connection refused")))
    together = [failing.handle(request("a")), failing.handle(request("b"))]
    failing.work.run_all()
    assert [reply.error_code for reply in replies(*together)] == [wire.IDP_UNAVAILABLE] * 2
    assert failing.idp.calls == 1


def test_a_request_is_due_one_idp_deadline_after_it_arrived():
    made = Handler(cache=False, deadline=8.0)
    arrived = made.clock.mono
    made.handle(request("a"))
    made.clock.advance(0.5)  # queued for a pool thread: that time counts against it
    made.work.run_all()
    assert made.idp.deadlines == [arrived + 8.0]


def test_an_unsent_token_reply_leaves_the_cache():
    made = Handler()
    first = made.handle(request("a"))
    made.work.run_all()
    [sent] = replies(first)
    hit = made.handle(request("b"))
    assert isinstance(hit, Reply)
    made.handler.unsent(hit)  # the worker answered token_too_large instead
    again = made.handle(request("c"))
    made.work.run_all()
    [fresh] = replies(again)
    assert orjson.loads(fresh.body)["access_token"] != orjson.loads(sent.body)["access_token"]
    assert made.idp.calls == 2


def test_an_inline_resource_goes_into_the_grant_and_a_bad_one_is_invalid_request():
    made = Handler()
    outcome = made.handle(request("r", resource=["https://api.example"], audience="orders"))
    made.work.run_all()
    replies(outcome)
    [grant] = made.idp.grants
    assert grant is not None
    assert (grant.resources, grant.audience, grant.auth.method) == (
        ("https://api.example",), "orders", "client_secret_post")
    bad = made.handle(request("bad", resource="not-a-uri"))
    assert isinstance(bad, Reply) and bad.error_code == wire.INVALID_REQUEST
    assert "absolute URI" in orjson.loads(bad.body)["error"]
    assert made.idp.calls == 1
