"""AsyncTokenClient's decisions with no server and no nats-py: a stand-in connection with
nats-py's shape answers as a worker (or a forger) would. Which replies are believed, the
inbox, single flight, the cache, retries, a lost connection, close, and the trace context in
the request's headers."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from token_worker import (
    AsyncTokenClient,
    ClientClosed,
    NatsUnavailable,
    NoWorkerAnswered,
    TokenRequestFailed,
)

SECRET = "async-unit-secret"
RANDOM = r"[A-Za-z0-9_-]{22}"


@dataclass
class Msg:
    """A nats-py ``Msg`` as the client reads it."""

    subject: str
    data: bytes
    headers: dict[str, str] | None = None


Answer = Callable[[dict[str, Any]], list[Msg | dict[str, Any]]]
"""What the stand-in's worker sends back for a request body: replies (a dict is JSON)."""


def token_for(body: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"request_id": body["request_id"], "access_token": f"tok-{body['request_id'][:8]}",
            "token_type": "Bearer", "expires_in": 300, "scope": "openid",
            "token_source": "idp", **fields}


def answered(body: dict[str, Any]) -> list[Msg | dict[str, Any]]:
    """A worker's answer: the token."""
    return [token_for(body)]


class FakeNats:
    """A connected nats-py client with no server: what is published to a subject someone
    answers is answered (asynchronously, as the server would) by ``answer``; nobody there:
    the 503 no-responders status."""

    def __init__(self, answer: Answer | None = answered, *, max_payload: int = 1 << 20
                 ) -> None:
        self.answer = answer
        self.max_payload = max_payload
        self.is_connected = True
        self.is_closed = False
        self.published: list[tuple[str, bytes, str, dict[str, str] | None]] = []
        self.subscriptions: dict[str, Any] = {}
        self.deliveries: set[asyncio.Task[None]] = set()

    async def subscribe(self, subject: str, queue: str = "", cb: Any = None) -> Any:
        self.subscriptions[subject] = cb
        fake = self

        class Subscription:
            async def unsubscribe(self) -> None:
                fake.subscriptions.pop(subject, None)
        return Subscription()

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "",
                      headers: dict[str, str] | None = None) -> None:
        self.published.append((subject, payload, reply, headers))
        body = json.loads(payload)
        if self.answer is None:
            replies: list[Msg | dict[str, Any]] = [Msg(reply, b"", {"Status": "503"})]
        else:
            replies = self.answer(body)
        for sent in replies:
            message = sent if isinstance(sent, Msg) else Msg(reply, json.dumps(sent).encode())
            asyncio.get_running_loop().call_soon(self.deliver, message)

    def deliver(self, message: Msg) -> None:
        for pattern, callback in self.subscriptions.items():
            if message.subject.startswith(pattern[:-1]):
                task = asyncio.ensure_future(callback(message))
                self.deliveries.add(task)  # kept until done, as nats-py keeps its tasks
                task.add_done_callback(self.deliveries.discard)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_a_token_comes_back_over_an_unguessable_inbox_of_its_own():
    nc = FakeNats()

    async def main() -> Any:
        client = AsyncTokenClient(nc, inbox_prefix="_INBOX.orders")
        return client, await client.get_token("svc", SECRET, "openid")

    client, token = run(main())
    assert token.access_token.startswith("tok-") and token.token_type == "Bearer"
    [subscribed] = nc.subscriptions
    assert re.fullmatch(rf"_INBOX\.orders\.{RANDOM}\.\*", subscribed)
    [(subject, payload, reply, headers)] = nc.published
    assert subject == "token.request" and headers is None
    assert re.fullmatch(rf"{re.escape(client.inbox)}\.{RANDOM}", reply)
    body = json.loads(payload)
    assert body["client_id"] == "svc" and body["client_secret"] == SECRET
    assert body["scope"] == "openid"


def test_replies_that_do_not_echo_the_request_or_are_too_large_are_dropped():
    def forged_first(body: dict[str, Any]) -> list[Msg | dict[str, Any]]:
        return [token_for({"request_id": "someone-else"}), {"access_token": "no-id"},
                token_for(body, access_token="x" * 2000), token_for(body)]

    async def main() -> Any:
        client = AsyncTokenClient(FakeNats(forged_first), max_reply_size=1000)
        return client, await client.get_token("svc", SECRET)

    client, token = run(main())
    assert token.access_token.startswith("tok-")
    assert client.replies_dropped == 3


def test_a_reply_that_is_no_well_formed_token_is_a_bad_reply_and_an_error_keeps_its_code():
    async def main(answer: Answer) -> str:
        with pytest.raises(TokenRequestFailed) as caught:
            await AsyncTokenClient(FakeNats(answer)).get_token("svc", SECRET)
        return caught.value.error_code

    assert run(main(lambda body: [token_for(body, token_type="DPoP")])) == "bad_reply"
    assert run(main(lambda body: [{"request_id": body["request_id"], "error": "refused",
                                   "error_code": "invalid_client"}])) == "invalid_client"


def test_no_worker_is_reported_and_a_too_large_request_is_never_sent():
    nc = FakeNats(None, max_payload=300)

    async def main() -> None:
        client = AsyncTokenClient(nc, retries=0)
        with pytest.raises(NoWorkerAnswered, match="no worker is subscribed"):
            await client.get_token("svc", SECRET)
        with pytest.raises(TokenRequestFailed) as caught:
            await client.get_token("svc", SECRET, "x" * 400)
        assert caught.value.error_code == "request_too_large"
        with pytest.raises(TokenRequestFailed) as invalid:
            await client.get_token("svc", "")
        assert invalid.value.error_code == "invalid_request"

    run(main())
    assert len(nc.published) == 1


def test_concurrent_calls_share_one_request_per_key_and_the_cache_keeps_the_token():
    nc = FakeNats()

    async def main() -> tuple[list[Any], list[Any], Any]:
        client = AsyncTokenClient(nc, max_ttl=60)
        same = await asyncio.gather(*(client.get_token("svc", SECRET) for _ in range(50)))
        fresh = await asyncio.gather(*(client.get_token("svc", SECRET, skip_cache=True)
                                       for _ in range(5)))
        return same, fresh, await client.get_token("svc", SECRET)

    same, fresh, cached = run(main())
    assert len(nc.published) == 2  # one for the 50, one for the 5 fresh ones
    assert len({token.access_token for token in same}) == 1
    assert {token.access_token for token in fresh} != {same[0].access_token}
    assert cached.access_token == fresh[0].access_token  # a fresh token replaces the old
    assert cached.expires_in() <= 60  # max_ttl caps what the worker said (300)


def test_a_cancelled_caller_leaves_the_request_to_those_still_waiting():
    async def main() -> Any:
        nc = FakeNats(lambda body: [])  # answered below, once the first caller is gone
        client = AsyncTokenClient(nc)
        first = asyncio.ensure_future(client.get_token("svc", SECRET))
        second = asyncio.ensure_future(client.get_token("svc", SECRET))
        await asyncio.sleep(0.01)
        first.cancel()
        _subject, payload, reply, _headers = nc.published[0]
        nc.deliver(Msg(reply, json.dumps(token_for(json.loads(payload))).encode()))
        token = await second
        assert first.cancelled()
        return token, len(nc.published)

    token, published = run(main())
    assert token.access_token.startswith("tok-") and published == 1


def test_a_lost_connection_ends_the_attempt_and_the_request_is_asked_again_once_back():
    async def main() -> tuple[Any, int]:
        nc = FakeNats(lambda body: [])  # the first attempt's reply is lost with the server
        client = AsyncTokenClient(nc, timeout=5)
        call = asyncio.ensure_future(client.get_token("svc", SECRET))
        while not nc.published:
            await asyncio.sleep(0.01)
        nc.is_connected = False
        await asyncio.sleep(0.3)
        nc.answer = answered
        nc.is_connected = True
        return await asyncio.wait_for(call, 5), len(nc.published)

    token, published = run(main())
    assert token.access_token.startswith("tok-") and published == 2


def test_a_connection_not_back_within_the_budget_is_nats_unavailable():
    async def main() -> None:
        nc = FakeNats()
        nc.is_connected = False
        with pytest.raises(NatsUnavailable, match="lost"):
            await AsyncTokenClient(nc).get_token("svc", SECRET, budget=0.3)
        nc.is_closed = True
        with pytest.raises(NatsUnavailable, match="closed"):
            await AsyncTokenClient(nc).get_token("svc", SECRET)

    run(main())


def test_close_ends_waiting_calls_and_refuses_new_ones():
    async def main() -> None:
        nc = FakeNats(lambda body: [])
        client = AsyncTokenClient(nc)
        call = asyncio.ensure_future(client.get_token("svc", SECRET))
        while not nc.published:
            await asyncio.sleep(0.01)
        await client.close()
        with pytest.raises(ClientClosed):
            await call
        with pytest.raises(ClientClosed):
            await client.get_token("svc", SECRET)
        assert nc.subscriptions == {}

    run(main())


def test_arguments_are_checked_as_the_threaded_client_checks_them():
    client = AsyncTokenClient(FakeNats())
    with pytest.raises(TypeError):
        run(client.get_token("svc", SECRET, credential="orders"))
    with pytest.raises(ValueError, match="credential"):
        run(client.get_token(credential="a.b"))
    with pytest.raises(ValueError, match="inbox_prefix"):
        AsyncTokenClient(FakeNats(), inbox_prefix="a.*")
    with pytest.raises(ValueError, match="timeout"):
        AsyncTokenClient(FakeNats(), timeout=float("nan"))
    nats = FakeNats()
    with pytest.raises(ValueError, match="budget"):
        run(AsyncTokenClient(nats).get_token("svc", SECRET, budget=float("inf")))
    assert nats.published == []  # refused before anything was sent


def test_a_named_credential_is_asked_on_its_subject_and_must_be_named_back():
    def named(body: dict[str, Any]) -> list[Msg | dict[str, Any]]:
        return [token_for(body, credential="billing"), token_for(body, credential="orders")]

    nc = FakeNats(named)

    async def main() -> Any:
        client = AsyncTokenClient(nc)
        return client, await client.get_token(credential="orders")

    client, _token = run(main())
    assert nc.published[0][0] == "token.named.orders"
    assert "client_secret" not in json.loads(nc.published[0][1])
    assert client.replies_dropped == 1


def test_the_request_carries_the_trace_context_of_its_span_under_the_apps(spans):
    from opentelemetry import trace

    nc = FakeNats()

    async def main() -> None:
        with trace.get_tracer("app").start_as_current_span("handler"):
            await AsyncTokenClient(nc).get_token("svc", SECRET)

    run(main())
    [requested] = [s for s in spans.get_finished_spans() if s.name == "request token.request"]
    [app] = [s for s in spans.get_finished_spans() if s.name == "handler"]
    assert requested.parent.span_id == app.context.span_id
    headers = nc.published[0][3]
    assert headers is not None
    assert headers["traceparent"].startswith(f"00-{requested.context.trace_id:032x}-"
                                             f"{requested.context.span_id:016x}-")
    assert SECRET not in str(dict(requested.attributes))
