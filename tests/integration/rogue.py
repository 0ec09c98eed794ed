"""Responders for the requester's tests: real NATS clients (nats-py) on a real nats-server.

A :class:`Responder` joins a subject (by default ``token.request`` in the workers' queue
group, as a rogue member would) and answers each request with whatever its ``answer``
function returns: forged replies, sprays at guessed inboxes, oversized bodies, silence, or
a stub of the worker (:func:`stub_worker`) answering what the real worker never sends (a
huge or fractional ``expires_in``, a malformed token, an answer that took 100 s). Tests of
what the requester gets from a worker use the real one; these are for what it must refuse.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, NamedTuple

import nats as nats_py

QUEUE = "token-workers"


class Seen(NamedTuple):
    """One request a responder received."""

    subject: str
    reply: str
    body: Any
    """The parsed JSON body (None when it was not JSON)."""


Publish = tuple[str, bytes]
"""(subject, payload) to publish in answer."""
Answer = Callable[[Seen], list[Publish]]


class Responder:
    """A nats-py subscriber that answers with ``answer(seen)``; synchronous, for tests."""

    def __init__(self, url: str, answer: Answer, *, subject: str = "token.request",
                 queue: str = QUEUE) -> None:
        self.seen: list[Seen] = []
        self.published = 0
        self._answer = answer
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._nc = self._run(nats_py.connect(url, allow_reconnect=False,
                                             max_outstanding_pings=100))
        self._run(self._nc.subscribe(subject, queue=queue, cb=self._on_message))
        self._run(self._nc.flush())

    def _run(self, coro: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    async def _on_message(self, message: Any) -> None:
        try:
            body = json.loads(message.data)
        except ValueError:
            body = None
        seen = Seen(message.subject, message.reply, body)
        self.seen.append(seen)
        for subject, payload in self._answer(seen):
            await self._nc.publish(subject, payload)
            self.published += 1

    def close(self) -> None:
        if not self._loop.is_running():
            return
        self._run(self._nc.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Responder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


FORGED_PREFIX = "forged-"
"""Every token a rogue hands out starts with this, so a test can tell it from the IdP's."""


def forged_token_reply(request_id: str | None, **fields: Any) -> bytes:
    """A success reply carrying a forged token (``request_id`` None: the field is left out)."""
    body: dict[str, Any] = {"access_token": FORGED_PREFIX + secrets.token_hex(8),
                            "token_type": "Bearer", "expires_in": 3600}
    if request_id is not None:
        body["request_id"] = request_id
    body.update(fields)
    return json.dumps(body).encode()


def forge(kind: str) -> Answer:
    """A rogue that answers the request it got with a forgery of ``kind`` (and nothing
    genuine): ``other-id``, ``no-id``, ``not-json``, ``array``, ``wrong-credential``."""
    def answer(seen: Seen) -> list[Publish]:
        payloads = {
            "other-id": forged_token_reply("someone-else"),
            "no-id": forged_token_reply(None),
            "not-json": b"access_token=" + FORGED_PREFIX.encode() + b"x",
            "array": json.dumps([forged_token_reply(_request_id(seen)).decode()]).encode(),
            "wrong-credential": forged_token_reply(_request_id(seen), credential="billing"),
        }
        return [(seen.reply, payloads[kind])]
    return answer


def spray(guesses: int = 64) -> Answer:
    """The spraying attack: from its own share of requests, guess where the others'
    replies are awaited (the next sequence numbers, random tokens under the same inbox
    prefix) and send forged tokens there; the request it got is swallowed, and gets a
    forgery with another id on its own reply subject."""
    def answer(seen: Seen) -> list[Publish]:
        prefix, _, last = seen.reply.rpartition(".")
        start = int(last) if last.isdigit() else 0
        targets = [f"{prefix}.{start + n}" for n in range(1, guesses // 2 + 1)]
        targets += [f"{prefix}.{secrets.token_urlsafe(16)}" for _ in range(guesses // 2)]
        forged = [(target, forged_token_reply(_request_id(seen))) for target in targets]
        forged += [(target, forged_token_reply(None)) for target in targets[:8]]
        return [*forged, (seen.reply, forged_token_reply("someone-else"))]
    return answer


def stub_worker(*, expires_in: Any = 300, token: Any = None, extra: dict[str, Any] | None = None,
                   forged_first: bool = False) -> Answer:
    """A stub worker: a responder in the worker's shape (echoes ``request_id``; on a named
    subject names the credential), with fields a test wants to bend. ``forged_first`` sends a
    forgery with another id before the genuine reply."""
    def answer(seen: Seen) -> list[Publish]:
        body: dict[str, Any] = {
            "request_id": _request_id(seen),
            "access_token": token if token is not None else "genuine-" + secrets.token_hex(8),
            "token_type": "Bearer", "expires_in": expires_in,
        }
        if seen.subject.startswith("token.named."):
            body["credential"] = seen.subject.rsplit(".", 1)[1]
        if isinstance(seen.body, dict) and seen.body.get("scope") is not None:
            body["scope"] = seen.body["scope"]
        body.update(extra or {})
        genuine = (seen.reply, json.dumps(body).encode())
        if forged_first:
            return [(seen.reply, forged_token_reply("someone-else")), genuine]
        return [genuine]
    return answer


def _request_id(seen: Seen) -> str:
    body = seen.body
    return str(body.get("request_id", "")) if isinstance(body, dict) else ""
