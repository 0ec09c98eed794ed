"""The requester side: ask the worker fleet for a token in one call.

:class:`TokenClient` is safe to share between threads. It holds one NATS connection whose
reply space (:mod:`token_worker.nats.replies`: one wildcard inbox subscription under
``inbox_prefix``, an unguessable reply subject per attempt) its calls wait on
(:mod:`token_worker.client.inbox`, which also says which replies are believed); requests
are built and replies read with the worker's own wire
types (:mod:`token_worker.wire`), so the two ends cannot drift apart.

A reply is believed only if it arrives on an attempt's subject, fits the size cap, is a JSON
object and echoes the request's ``request_id`` (and, for a named credential, its name).
Anything else is dropped and counted (:attr:`TokenClient.replies_dropped`), never returned
or cached, and the attempt keeps waiting for the genuine reply. A genuine reply that is not
a well-formed token (visible ASCII, of type ``Bearer``) is a ``bad_reply`` error,
never cached. A body the worker would refuse is refused before it is sent.

Each call runs attempt by attempt (:mod:`token_worker.client.requester`); retries follow what
happened (:mod:`token_worker.client.retries`): "no worker subscribed" is retried for one
``timeout``, a lost NATS connection for the whole budget and said to be the cause, an
attempt with no answer counts against ``retries``, a worker turning the request away
(``shutting_down``, ``overloaded``) is asked again within the budget. Tokens are kept (the
worker's cache: keyed by a digest of the secret, bounded, capped at ``max_ttl``; their life
counted from the send, never longer than ``expires_in`` says) until near expiry, so a
service asking every second sends almost nothing over NATS.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from token_worker import defaults, tracing
from token_worker.client.exchange import (
    MAX_REPLY_SIZE,
    MAX_TTL,
    NAMED_SUBJECT,
    Token,
    ask,
    call_budget,
    check_options,
    check_request,
    named,
    token_from_entry,
    token_from_reply,
)
from token_worker.client.session import Session, Sessions, open_session
from token_worker.config import NatsConfig, parse_nats_urls
from token_worker.errors import ClientClosed
from token_worker.tokens.cache import TokenCache
from token_worker.wire import encode

__all__ = ["MAX_REPLY_SIZE", "MAX_TTL", "NAMED_SUBJECT", "Token", "TokenClient"]


class TokenClient:
    """Requests tokens from the worker fleet; share one instance between threads.

    ``timeout`` bounds one attempt (10 s: longer than the workers' 8 s ``idp.deadline``, so
    a slow IdP yields an answer, not a timeout, and the longest a call waits for a worker to
    subscribe), ``retries`` the attempts after the first one that got no answer (0: exactly
    one attempt, nothing retried), ``budget`` (default: enough for every attempt) the whole
    call. ``cache`` keeps tokens until
    ``expiry_margin`` seconds before they expire, and never longer than ``max_ttl``.
    ``inbox_prefix`` is where replies are awaited (``<inbox_prefix>.<random>.<random>``), so
    NATS permissions can give each service a private reply space. ``max_reply_size``
    bounds a believed reply; ``named_subject`` is the prefix of named-credential requests.

    Safe across ``fork``: a child process opens its own connection on first use and never
    touches its parent's (:mod:`token_worker.client.session`).
    """

    def __init__(
        self,
        nats: NatsConfig | str = defaults.NATS_URL,
        *,
        subject: str = defaults.SUBJECT,
        timeout: float = 10.0,
        retries: int = 2,
        name: str = "token-worker requester",
        cache: bool = True,
        expiry_margin: float = 30.0,
        max_cached: int = 1000,
        now: Callable[[], float] = time.time,
        inbox_prefix: str = "_INBOX",
        named_subject: str = NAMED_SUBJECT,
        max_reply_size: int = MAX_REPLY_SIZE,
        max_ttl: float = MAX_TTL,
    ) -> None:
        check_options(inbox_prefix=inbox_prefix, named_subject=named_subject,
                      max_reply_size=max_reply_size, max_ttl=max_ttl, timeout=timeout,
                      retries=retries)
        config = nats if isinstance(nats, NatsConfig) else NatsConfig(
            urls=_urls(nats), reconnect_wait=1.0, max_reconnect=-1)
        # Requests never wait in the reconnect buffer: the client retries them itself
        # within the budget, so a request is neither sent twice nor held out of sight.
        self._config = replace(config, reconnect_buffer_size=0)
        self._subject = subject
        self._named_subject = named_subject
        self._timeout = timeout
        self._retries = retries
        self._max_ttl = max_ttl
        self._now = now
        new_cache = functools.partial(TokenCache, max_entries=max_cached,
                                      expiry_margin=expiry_margin, refresh_ahead=0.0,
                                      now=now) if cache else lambda: None
        self._sessions = Sessions(functools.partial(
            open_session, config=self._config, name=name, inbox_prefix=inbox_prefix,
            max_reply_size=max_reply_size, timeout=timeout, retries=retries,
            new_cache=new_cache))

    @property
    def requests_sent(self) -> int:
        """Requests that went over NATS from this process (cache hits send none)."""
        return mine.requester.requests_sent if (mine := self._sessions.mine()) else 0

    @property
    def attempts_unanswered(self) -> int:
        """Attempts from this process that got no genuine answer in time."""
        return mine.requester.attempts_unanswered if (mine := self._sessions.mine()) else 0

    @property
    def replies_dropped(self) -> int:
        """Replies not believed (other or no ``request_id``, not JSON, too large, late,
        for no pending request): dropped, never returned or cached."""
        return mine.inbox.dropped if (mine := self._sessions.mine()) else 0

    @property
    def inbox(self) -> str:
        """This process's reply space: replies arrive on ``<inbox>.<random token>``."""
        return self._sessions.here().inbox.prefix

    def __enter__(self) -> TokenClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; calls waiting or made later raise :class:`ClientClosed`.
        In a forked child, only the child's own connection is closed, never the parent's."""
        self._sessions.close()

    def get_token(self, client_id: str | None = None, client_secret: str | None = None,
                  scope: str | None = None, *, credential: str | None = None,
                  budget: float | None = None, skip_cache: bool = False) -> Token:
        """Return a token, or raise a :class:`TokenRequestFailed`.

        Either ``client_id`` and ``client_secret`` (sent to the worker), or ``credential``,
        the name of a credential the worker holds (no secret leaves this process).
        ``scope=None`` asks for the worker's default scope, ``""`` for none.
        ``IdP refused``: ``TokenRequestFailed`` with the IdP's OAuth2 ``error_code``;
        nobody answered after the retries: :class:`NoWorkerAnswered`; the budget ran out:
        :class:`RequestTimedOut`; NATS away: :class:`NatsUnavailable`; after
        :meth:`close`: :class:`ClientClosed`. ``skip_cache`` asks for a fresh token.
        """
        if self._sessions.closed.is_set():
            raise ClientClosed("the TokenClient is closed")
        asked = ask(client_id, client_secret, scope, credential=credential,
                    skip_cache=skip_cache, subject=self._subject,
                    named_subject=self._named_subject)
        total = call_budget(budget, timeout=self._timeout, retries=self._retries)
        here = self._sessions.here()
        if here.cache is not None and not skip_cache:
            entry = here.cache.get(asked.key)
            if entry is not None:
                return token_from_entry(entry)
        sent = self._now()
        reply = self._send(here, asked.payload, asked.request_id, credential, total)
        return token_from_reply(reply, asked, sent, cache=here.cache, now=self._now,
                                max_ttl=self._max_ttl)

    def request(self, body: dict[str, Any], *, budget: float | None = None,
                credential: str | None = None) -> dict[str, Any]:
        """Send one raw request body and return the genuine reply as a dict.

        With ``credential`` the body goes to ``<named_subject>.<credential>`` and the reply
        must name that credential. A body without ``request_id`` gets one (on a copy): the
        reply is matched by it. A body the worker would refuse (the wire types' rules: a
        field too long, of the wrong type, with control characters, a missing secret) is
        not sent: :class:`TokenRequestFailed` ``invalid_request`` says why, at once.
        """
        if self._sessions.closed.is_set():
            raise ClientClosed("the TokenClient is closed")
        if not isinstance(body.get("request_id"), str) or not body["request_id"]:
            body = {**body, "request_id": str(uuid.uuid4())}
        total = call_budget(budget, timeout=self._timeout, retries=self._retries)
        return self._send(self._sessions.here(), encode(body), body["request_id"], credential,
                          total)

    def _send(self, here: Session, payload: bytes, request_id: str, credential: str | None,
              total: float) -> dict[str, Any]:
        """Send one encoded request and return the decoded reply that answers it within
        ``total`` seconds; with tracing on, in a span of its own whose context the request's
        headers carry."""
        subject = self._subject if credential is None else named(self._named_subject,
                                                                 credential)
        check_request(payload, named=credential is not None)
        with tracing.requesting(subject, request_id) as headers:
            return here.requester.send(subject, payload, request_id, credential, total,
                                       headers=headers)


def _urls(raw: str) -> tuple[str, ...]:
    """The worker's URL normalisation (``host:port`` becomes ``nats://host:port``)."""
    try:
        return parse_nats_urls(raw)
    except ValueError as error:
        raise ValueError(f"NATS URL {error}") from None
