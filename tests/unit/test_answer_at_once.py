"""The cache hit answered at once (``answer_at_once``) gives exactly what the general path
gives: the same replies, the same counts, the same IdP calls and the same cache, for any
mix of requests and clock moves; and the worker uses it only for handlers that have it,
counting and sending its replies as it does every other."""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes import Clock, FakeIssuer, HeldExecutor, StubConnection
from tests.helpers import wait_until
from token_worker import wire
from token_worker.config import Config
from token_worker.metrics import Metrics
from token_worker.nats.protocol import Message
from token_worker.serve.handler import Deferred, Reply, RequestHandler, Waiting
from token_worker.serve.token_handler import TokenHandler
from token_worker.serve.worker import TokenWorker
from token_worker.tokens.broker import TokenBroker
from token_worker.tokens.bulkheads import Guards
from token_worker.tokens.cache import TokenCache

SUBJECT = "token.request"
DEFAULT_SCOPE = "openid"
SERVER_LIMIT = 1024 * 1024


class World:
    """A token handler over a broker and cache on a hand-moved clock, the IdP work run by
    the asking thread (so a miss is answered before the call returns)."""

    def __init__(self, *, at_once: bool, max_payload: int = 2048, margin: float = 30.0,
                 refresh_ahead: float = 0.2, cache: bool = True,
                 wall: float = 1_800_000_000.0) -> None:
        self.at_once = at_once
        self.clock = Clock(wall=wall)
        self.issuer = FakeIssuer(expires_in=300, issued_at=self.clock.time)
        self.metrics = Metrics()
        self.refresher = HeldExecutor(self.clock)
        self.cache = TokenCache(max_entries=100, expiry_margin=margin,
                                refresh_ahead=refresh_ahead, now=self.clock)
        self.broker = TokenBroker(self.issuer, self.cache if cache else None,
                                  auth_method="client_secret_post",
                                  metrics=self.metrics, refresher=self.refresher,
                                  guards=Guards.from_defaults(clock=self.clock.monotonic),
                                  clock=self.clock.monotonic)
        self.handler = TokenHandler(self.broker, default_scope=DEFAULT_SCOPE,
                                    max_payload=max_payload, deadline=None,
                                    clock=self.clock.monotonic)

    def ask(self, payload: bytes, server_limit: int = SERVER_LIMIT) -> tuple[str, Any]:
        """(how it was answered, the reply's body as JSON without its timestamp, and its
        outcome)."""
        message = Message(SUBJECT, "_INBOX.x", payload)
        if self.at_once:
            body = self.handler.answer_at_once(message, server_limit)
            if body is not None:
                return "at once", (without_timestamp(body), "")
        outcome = self.handler.handle_message(message)
        if isinstance(outcome, Waiting):
            replies: list[Reply] = []
            outcome.then(replies.append)
            assert replies, "the IdP work runs on the asking thread: answered already"
            outcome = replies[0]
        assert isinstance(outcome, Reply)
        return "general", (without_timestamp(outcome.body), outcome.error_code)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.refresher.run_all()

    def state(self) -> dict[str, Any]:
        cache_events = {name: self.metrics.registry.get_sample_value(
            "token_worker_cache_events_total", {"event": name})
            for name in ("hit", "miss", "refresh")}
        return {"idp": self.issuer.sent, "cache_events": cache_events,
                "cached": [(key.client_id, key.scopes) for key in self.cache._entries],
                "refreshes queued": len(self.refresher.queued)}


def without_timestamp(body: bytes) -> dict[str, Any]:
    document = json.loads(body)
    assert isinstance(document, dict)
    document.pop("timestamp", None)
    return document


CLIENTS = {"svc-a": "secret-a", "svc-b": "s\u00e9cret b"}
client_ids = st.sampled_from([*CLIENTS, "nobody", " ", "svc\u2028x"])
scopes = st.sampled_from([None, "read", "write read", "  read   write ", "", ["read"],
                          "read\u202e"])
usual_bodies = st.fixed_dictionaries(
    {"client_id": client_ids},
    optional={"request_id": st.sampled_from(["r1", "", "r\u00e91", "r\x7f"]),
              "client_secret": st.sampled_from([*CLIENTS.values(), "wrong", ""]),
              "scope": scopes, "skip_cache": st.booleans(),
              "timestamp": st.just("2026-12-06T00:00:00Z"),
              "resource": st.just("https://api.example/"), "other": st.just(1)})
payloads = st.one_of(
    usual_bodies.map(lambda body: orjson.dumps(
        {**body, "client_secret": body.get("client_secret", CLIENTS.get(body["client_id"],
                                                                           "x"))})),
    st.sampled_from([b"not json", b"[]", b'{"client_id": "svc-a"}', b"{" * 3000]))
steps = st.lists(st.one_of(
    payloads.map(lambda payload: ("ask", payload)),
    st.sampled_from([0.5, 60.0, 240.0, 290.0]).map(lambda seconds: ("advance", seconds)),
    st.sampled_from([64, 300]).map(lambda limit: ("small server", limit))), max_size=30)


WARM = orjson.dumps({"request_id": "w", "client_id": "svc-a", "client_secret": "secret-a"})


@settings(max_examples=400, deadline=None)
@given(steps)
def test_answering_at_once_changes_nothing_but_the_work_done(script: list[tuple[str, Any]]):
    hot, general = World(at_once=True), World(at_once=False)
    for world in (hot, general):
        world.ask(WARM)
    assert hot.ask(WARM)[0] == "at once", "the hot path is taken here, or this proves nothing"
    general.ask(WARM)
    for action, value in script:
        if action == "advance":
            hot.advance(value)
            general.advance(value)
            continue
        payload, limit = (value, SERVER_LIMIT) if action == "ask" else (
            orjson.dumps({"client_id": "svc-a", "client_secret": "secret-a"}), value)
        (_, hot_reply), (how, general_reply) = hot.ask(payload, limit), general.ask(payload)
        assert how == "general"
        assert hot_reply == general_reply, payload
        assert hot.state() == general.state()


def test_a_cached_token_is_answered_at_once_and_counted_as_one_hit():
    world = World(at_once=True)
    body = orjson.dumps({"request_id": "r1", "client_id": "svc-a",
                         "client_secret": "secret-a", "scope": "write  read"})
    assert world.ask(body)[0] == "general"  # fetched
    world.advance(10)
    how, (reply, error_code) = world.ask(body)
    assert (how, error_code) == ("at once", "")
    assert reply == {"request_id": "r1", "access_token": "token-1", "token_type": "Bearer",
                     "expires_in": 290, "scope": "write read", "token_source": "cache"}
    assert world.state()["cache_events"] == {"hit": 1.0, "miss": 1.0, "refresh": 0.0}


@pytest.mark.parametrize(("change", "why"), [
    ({"skip_cache": True}, "skip_cache asks the IdP"),
    ({"client_secret": "wrong"}, "another secret is another key"),
    ({"scope": "admin"}, "another scope is another key"),
    ({"scope": ["read"]}, "a scope list is not the usual request"),
    ({"resource": "https://api.example/"}, "a resource is not the usual request"),
    ({"client_id": " "}, "a bad request gets its error from the general path"),
])
def test_anything_but_a_usual_request_for_a_cached_token_is_left_to_the_general_path(
        change: dict[str, Any], why: str) -> None:
    world = World(at_once=True)
    usual = {"request_id": "r1", "client_id": "svc-a", "client_secret": "secret-a",
             "scope": "read"}
    world.ask(orjson.dumps(usual))
    before = world.state()
    message = Message(SUBJECT, "_INBOX.x", orjson.dumps({**usual, **change}))
    assert world.handler.answer_at_once(message, SERVER_LIMIT) is None, why
    assert world.state() == before, "counted or changed something"


def test_a_token_due_for_refresh_or_a_reply_over_the_server_limit_goes_general():
    world = World(at_once=True)
    body = orjson.dumps({"client_id": "svc-a", "client_secret": "secret-a"})
    world.ask(body)
    message = Message(SUBJECT, "_INBOX.x", body)
    assert world.handler.answer_at_once(message, SERVER_LIMIT) is not None
    assert world.handler.answer_at_once(message, 100) is None  # the reply is longer
    world.advance(250)  # past the refresh point (80 % of the 270 s it may be served)
    assert world.handler.answer_at_once(message, SERVER_LIMIT) is None
    assert world.ask(body)[0] == "general"
    assert len(world.refresher.queued) == 1, "the general path starts the refresh"


def test_the_bounds_are_the_general_paths_a_body_or_reply_at_the_limit_is_answered_at_once():
    world = World(at_once=True, max_payload=2048)
    usual = {"client_id": "svc-a", "client_secret": "secret-a"}
    world.ask(orjson.dumps(usual))
    padded = orjson.dumps({**usual, "timestamp": ""})
    at_limit = orjson.dumps({**usual, "timestamp": "x" * (2048 - len(padded))})
    assert len(at_limit) == 2048
    body = world.handler.answer_at_once(Message(SUBJECT, "_INBOX.x", at_limit), SERVER_LIMIT)
    assert body is not None
    message = Message(SUBJECT, "_INBOX.x", orjson.dumps(usual))
    assert world.handler.answer_at_once(message, len(body)) is not None
    assert world.handler.answer_at_once(message, len(body) - 1) is None


def test_at_the_refresh_point_itself_the_general_path_answers_and_starts_the_refresh():
    world = World(at_once=True)
    body = orjson.dumps({"client_id": "svc-a", "client_secret": "secret-a"})
    world.ask(body)
    [(entry, _)] = world.cache._entries.values()
    world.clock.advance(entry.refresh_at - world.clock.time())
    assert world.handler.answer_at_once(Message(SUBJECT, "_INBOX.x", body),
                                        SERVER_LIMIT) is None
    assert world.ask(body)[0] == "general"
    assert len(world.refresher.queued) == 1


def test_a_token_in_its_last_second_is_answered_at_once_with_expires_in_0():
    world = World(at_once=True, margin=0.0, refresh_ahead=0.0)  # served to the end
    body = orjson.dumps({"client_id": "svc-a", "client_secret": "secret-a"})
    world.ask(body)
    world.clock.advance(299.5)
    how, (reply, _) = world.ask(body)
    assert (how, reply["expires_in"]) == ("at once", 0)


@pytest.mark.parametrize("wall", [1_800_000_000.0, 100.0])
def test_expires_in_counts_down_from_the_tokens_life_on_any_clock(wall: float) -> None:
    world = World(at_once=True, wall=wall)
    body = orjson.dumps({"client_id": "svc-a", "client_secret": "secret-a"})
    world.ask(body)
    world.clock.advance(10.25)
    how, (reply, _) = world.ask(body)
    assert (how, reply["expires_in"]) == ("at once", 289)


def test_a_worker_without_a_cache_answers_nothing_at_once():
    world = World(at_once=True, cache=False)
    body = orjson.dumps({"client_id": "svc-a", "client_secret": "secret-a"})
    assert world.ask(body)[0] == "general"  # the token endpoint is known from here on
    assert world.handler.answer_at_once(Message(SUBJECT, "_INBOX.x", body),
                                        SERVER_LIMIT) is None
    assert world.issuer.calls == 1


def test_with_debug_logs_on_an_answer_at_once_says_so_as_the_general_path_does(
        caplog: pytest.LogCaptureFixture) -> None:
    lines = []
    for at_once in (True, False):
        world = World(at_once=at_once)
        body = orjson.dumps({"request_id": "r9", "client_id": "svc-a",
                             "client_secret": "secret-a"})
        world.ask(body)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, "token_worker"):
            assert world.ask(body)[0] == ("at once" if at_once else "general")
        [record] = [r for r in caplog.records if r.message == "token served from cache"]
        lines.append((record.request_id, record.client_id, record.expires_in,  # type: ignore[attr-defined]
                      record.credential))  # type: ignore[attr-defined]
    assert lines[0] == lines[1] == ("r9", "svc-a", 300, None)


def test_a_worker_refusing_inline_secrets_never_answers_them_at_once():
    world = World(at_once=True)
    body = orjson.dumps({"client_id": "svc-a", "client_secret": "secret-a"})
    world.ask(body)
    refusing = TokenHandler(world.broker, default_scope=DEFAULT_SCOPE, max_payload=2048,
                            inline_secrets=False)
    assert refusing.answer_at_once(Message(SUBJECT, "_INBOX.x", body), SERVER_LIMIT) is None
    assert len(body) < 2048
    oversized = orjson.dumps({"client_id": "svc-a", "client_secret": "secret-a",
                              "timestamp": "x" * 3000})
    assert world.handler.answer_at_once(Message(SUBJECT, "_INBOX.x", oversized),
                                        SERVER_LIMIT) is None


# --- the worker: who is asked, what is counted and sent ------------------------------------


class AtOnce(RequestHandler):
    """Answers ``{"at_once": ...}`` at once (None, or raising, as the body says); every
    other request through ``handle``, recorded."""

    def __init__(self) -> None:
        self.handled: list[bytes] = []

    def answer_at_once(self, message: Message, max_size: int) -> bytes | None:
        body = json.loads(message.payload)
        if body.get("raise"):
            raise RuntimeError("boom")
        if body.get("oversize"):
            return b"x" * (max_size + 1)
        if body.get("text"):
            return '{"at_once": "text"}'  # type: ignore[return-value]
        return orjson.dumps({"at_once": body["id"]}) if body.get("at_once") else None

    def handle(self, payload: bytes) -> Reply | Deferred[Any]:
        self.handled.append(payload)
        return Reply(orjson.dumps({"general": json.loads(payload)["id"]}), "invalid_request")


class Plain(RequestHandler):
    def handle(self, payload: bytes) -> Reply:
        return Reply(b'{"plain": true}')


@pytest.fixture
def worker() -> Any:
    started: list[TokenWorker] = []

    def start(handler: RequestHandler) -> tuple[TokenWorker, StubConnection]:
        connection = StubConnection()
        made = TokenWorker(Config(name_suffix="unit", reply_subjects=(">",)), handler,
                           connection=connection)
        started.append(made)
        made.start()
        return made, connection

    yield start
    for made in started:
        made.stop(timeout=2)


def requests_counted(worker: TokenWorker, outcome: str) -> float:
    value = worker.metrics.registry.get_sample_value("token_worker_requests_total",
                                                     {"outcome": outcome})
    return value or 0.0


def test_the_worker_sends_and_counts_an_answer_at_once_without_asking_handle(worker: Any):
    handler = AtOnce()
    made, connection = worker(handler)
    connection.deliver(SUBJECT, b'{"id": 1, "at_once": true}', "_INBOX.a")
    connection.deliver(SUBJECT, b'{"id": 2}', "_INBOX.b")
    connection.deliver(SUBJECT, b'{"id": 3, "raise": true}', "_INBOX.c")
    assert json.loads(connection.wait_for_reply("_INBOX.a")) == {"at_once": 1}
    assert json.loads(connection.wait_for_reply("_INBOX.b")) == {"general": 2}
    crashed = json.loads(connection.wait_for_reply("_INBOX.c"))
    assert crashed["error_code"] == wire.INTERNAL_ERROR
    assert handler.handled == [b'{"id": 2}']
    assert requests_counted(made, "ok") == 1
    assert requests_counted(made, "invalid_request") == 1
    assert requests_counted(made, "internal_error") == 1


@pytest.mark.parametrize("broken", ["oversize", "text"])
def test_an_answer_at_once_that_breaks_the_contract_is_the_handlers_failure_counted_once(
        worker: Any, broken: str) -> None:
    made, connection = worker(AtOnce())
    connection.deliver(SUBJECT, orjson.dumps({"id": 1, broken: True}), "_INBOX.a")
    reply = json.loads(connection.wait_for_reply("_INBOX.a"))
    assert reply["error_code"] == wire.INTERNAL_ERROR
    assert requests_counted(made, "ok") == 0
    assert requests_counted(made, "internal_error") == 1
    assert len(connection.published) == 1


def test_a_handler_without_a_hot_path_is_never_asked_for_one(worker: Any,
                                                              monkeypatch: Any) -> None:
    asked: list[Message] = []
    monkeypatch.setattr(RequestHandler, "answer_at_once",
                        lambda self, message, max_size: asked.append(message))
    made, connection = worker(Plain())
    connection.deliver(SUBJECT, b"{}", "_INBOX.p")
    assert connection.wait_for_reply("_INBOX.p") == b'{"plain": true}'
    wait_until(lambda: requests_counted(made, "ok") == 1)
    assert asked == []
