"""Bearer tokens attached for you: auth adapters for requests and httpx over a requester.

:class:`TokenAuth` takes a :class:`~token_worker.client.client.TokenClient` (or anything with
its ``get_token``) and works as ``requests.get(url, auth=...)`` and ``httpx.Client(auth=...)``;
:class:`AsyncTokenAuth` takes an :class:`~token_worker.client.async_client.AsyncTokenClient`
and works as ``httpx.AsyncClient(auth=...)``. Each request gets ``Authorization: Bearer
<token>`` from the client (its cache answers nearly every time, without NATS). When the API
answers 401, the adapter asks for a fresh token once (``skip_cache``) and sends the request
once more with it; a second 401 is the caller's. A fresh token is asked for only when the
token refused is still the newest one: when another request has renewed it meanwhile, that
token is used; when the token refused was itself fetched fresh less than
``RENEWAL_GAP`` seconds ago, the API refuses the client, not the token, and the 401 is
returned without asking again. So an API that answers 401 to everything costs one IdP
call every 30 s, not one per request (each would spend the client's call budget at the
worker, and its next real cache miss would be ``rate_limited``). That memory belongs to
the token client (per client id or credential, and scope), so adapters made per request
share it.

Only a body that can be sent twice is sent again: none, bytes or text, a form, JSON, and
(requests) a file that can seek back to where it started. A streamed body (a generator, an
iterator, an httpx stream not read into memory) cannot: its 401 is returned as it came, and
the fresh token is kept for the next request.

Neither requests nor httpx is imported for requests' sake (``pip install
'token-worker[requests]'`` or ``'token-worker[httpx]'`` installs the one the app uses): when
httpx is installed the adapters are ``httpx.Auth`` subclasses, as httpx requires of an
adapter that may send a request twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

from token_worker.client.exchange import Token

__all__ = ["AsyncTokenAuth", "TokenAuth"]

UNAUTHORIZED = 401
RENEWAL_GAP = 30.0
"""Seconds after a renewal during which a 401 for the token it brought is the caller's."""

if TYPE_CHECKING:
    import httpx

    _Base = httpx.Auth
else:
    try:
        from httpx import Auth as _Base
    except ImportError:  # requests only: httpx never asks
        _Base = object


class _Tokens(Protocol):
    def get_token(self, client_id: str | None = None, client_secret: str | None = None,
                  scope: str | None = None, *, credential: str | None = None,
                  skip_cache: bool = False) -> Token: ...


class _AsyncTokens(Protocol):
    async def get_token(self, client_id: str | None = None, client_secret: str | None = None,
                        scope: str | None = None, *, credential: str | None = None,
                        skip_cache: bool = False) -> Token: ...


class _Asking:
    """Who a token is asked for: a client id and secret, or a named credential."""

    def __init__(self, client_id: str | None, client_secret: str | None,
                 credential: str | None, scope: str | None) -> None:
        if credential is not None:
            if client_id is not None or client_secret is not None:
                raise TypeError("give either credential or client_id and client_secret")
        elif client_id is None or client_secret is None:
            raise TypeError("give client_id and client_secret, or credential")
        self.client_id = client_id
        self.client_secret = client_secret
        self.credential = credential
        self.scope = scope

    def arguments(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "client_secret": self.client_secret,
                "scope": self.scope, "credential": self.credential}

    def __repr__(self) -> str:
        who = (f"credential={self.credential!r}" if self.credential is not None
               else f"client_id={self.client_id!r}")
        return f"{who}, scope={self.scope!r}"


def _bearer(token: Token) -> str:
    return f"Bearer {token.access_token}"


class _Renewal:
    """Which token is worth renewing after a 401: only the newest, and not one a renewal
    brought moments ago (the last renewal's token is kept, as the client's cache keeps
    it). One per token client and asking (:func:`_renewal_of`), so that adapters made per
    call (``requests.get(url, auth=TokenAuth(...))``) share it; its locks make threads, or
    coroutines, that see the same 401 renew once."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._fresh: Token | None = None
        self._renewed_at = 0.0
        self.lock = threading.Lock()
        self.async_lock: asyncio.Lock | None = None  # made in the loop that first needs it

    def decide(self, refused: Token, current: Token) -> Token | None:
        """The token to retry with without asking (``current``, renewed by another
        request), or None: ask for a fresh one (see :meth:`worth_asking`)."""
        return current if current.access_token != refused.access_token else None

    def worth_asking(self, refused: Token) -> bool:
        """False when ``refused`` is the token the last renewal brought less than
        ``RENEWAL_GAP`` ago: the API refuses the client, and another IdP call now would
        bring the same answer."""
        return (self._fresh is None or self._fresh.access_token != refused.access_token
                or self._clock() - self._renewed_at >= RENEWAL_GAP)

    def renewed(self, fresh: Token) -> Token:
        self._fresh, self._renewed_at = fresh, self._clock()
        return fresh


_RENEWALS: weakref.WeakKeyDictionary[Any, dict[tuple[str | None, ...], _Renewal]] = (
    weakref.WeakKeyDictionary())
"""Token client -> its renewals by asking: kept as long as the client lives."""
_RENEWALS_LOCK = threading.Lock()


def _renewal_of(token_client: Any, asking: _Asking, clock: Callable[[], float]) -> _Renewal:
    """The renewal memory of ``asking`` at ``token_client``, made on first use."""
    key = (asking.client_id, asking.credential, asking.scope)
    with _RENEWALS_LOCK:
        kept = _RENEWALS.setdefault(token_client, {})
        if key not in kept:
            kept[key] = _Renewal(clock)
        return kept[key]


class TokenAuth(_Base):
    """``Authorization: Bearer`` from a :class:`TokenClient`, for requests and httpx (see
    the module docstring); share one between threads as the client is shared."""

    def __init__(self, token_client: _Tokens, *, client_id: str | None = None,
                 client_secret: str | None = None, credential: str | None = None,
                 scope: str | None = None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._tokens = token_client
        self._asking = _Asking(client_id, client_secret, credential, scope)
        self._renewal = _renewal_of(token_client, self._asking, clock)

    def __repr__(self) -> str:
        return f"TokenAuth({self._asking!r})"

    def token(self, *, fresh: bool = False) -> Token:
        """The token a request carries (``fresh``: not the cached one)."""
        return self._tokens.get_token(**self._asking.arguments(), skip_cache=fresh)

    def renew(self, refused: Token) -> Token | None:
        """The token to send again after ``refused`` got a 401, or None: do not send again
        (see the module docstring). Threads that see the same 401 renew once."""
        with self._renewal.lock:
            current = self._renewal.decide(refused, self.token())
            if current is not None:
                return current
            if not self._renewal.worth_asking(refused):
                return None
            return self._renewal.renewed(self.token(fresh=True))

    # --- requests ---------------------------------------------------------------------------

    def __call__(self, request: Any) -> Any:
        """requests: set the header, and look at the answer (a response hook)."""
        sent = self.token()
        request.headers["Authorization"] = _bearer(sent)
        rewind = _rewinder(request.body)
        retried = False

        def on_response(response: Any, **send: Any) -> Any:
            nonlocal retried
            if response.status_code != UNAUTHORIZED or retried:
                return response
            retried = True
            fresh = self.renew(sent)
            if fresh is None or rewind is None:
                return response  # refused fresh, or a streamed body that cannot be sent again
            rewind()
            response.content  # noqa: B018 - read, so the connection can be reused
            response.close()
            again = response.request.copy()
            again.headers["Authorization"] = _bearer(fresh)
            answer = response.connection.send(again, **send)
            answer.history.append(response)
            answer.request = again
            return answer

        request.register_hook("response", on_response)
        return request

    # --- httpx -------------------------------------------------------------------------------

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """httpx (``httpx.Client``): the header, and one retry after a 401."""
        sent = self.token()
        request.headers["Authorization"] = _bearer(sent)
        response = yield request
        if response.status_code != UNAUTHORIZED:
            return
        fresh = self.renew(sent)
        if fresh is not None and _replayable(request):
            request.headers["Authorization"] = _bearer(fresh)
            yield request

    async def async_auth_flow(self, request: httpx.Request
                              ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """httpx.AsyncClient would wait here on a blocking client: refused."""
        raise TypeError("TokenAuth blocks the event loop: use AsyncTokenAuth with an "
                        "AsyncTokenClient for httpx.AsyncClient")
        yield request  # pragma: no cover - makes this an async generator


class AsyncTokenAuth(_Base):
    """``Authorization: Bearer`` from an :class:`AsyncTokenClient`, for
    ``httpx.AsyncClient`` (see the module docstring)."""

    def __init__(self, token_client: _AsyncTokens, *, client_id: str | None = None,
                 client_secret: str | None = None, credential: str | None = None,
                 scope: str | None = None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._tokens = token_client
        self._asking = _Asking(client_id, client_secret, credential, scope)
        self._renewal = _renewal_of(token_client, self._asking, clock)

    def __repr__(self) -> str:
        return f"AsyncTokenAuth({self._asking!r})"

    async def token(self, *, fresh: bool = False) -> Token:
        """The token a request carries (``fresh``: not the cached one)."""
        return await self._tokens.get_token(**self._asking.arguments(), skip_cache=fresh)

    async def renew(self, refused: Token) -> Token | None:
        """As :meth:`TokenAuth.renew`: coroutines that see the same 401 renew once."""
        renewal = self._renewal
        if renewal.async_lock is None:
            renewal.async_lock = asyncio.Lock()
        async with renewal.async_lock:
            current = renewal.decide(refused, await self.token())
            if current is not None:
                return current
            if not renewal.worth_asking(refused):
                return None
            return renewal.renewed(await self.token(fresh=True))

    async def async_auth_flow(self, request: httpx.Request
                              ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """httpx.AsyncClient: the header, and one retry after a 401."""
        sent = await self.token()
        request.headers["Authorization"] = _bearer(sent)
        response = yield request
        if response.status_code != UNAUTHORIZED:
            return
        fresh = await self.renew(sent)
        if fresh is not None and _replayable(request):
            request.headers["Authorization"] = _bearer(fresh)
            yield request

    def sync_auth_flow(self, request: httpx.Request
                       ) -> Generator[httpx.Request, httpx.Response, None]:
        """httpx.Client cannot await the client: refused."""
        raise TypeError("AsyncTokenAuth needs httpx.AsyncClient: use TokenAuth with a "
                        "TokenClient for httpx.Client")
        yield request  # pragma: no cover - makes this a generator


def _replayable(request: httpx.Request) -> bool:
    """httpx: a body held in memory (read) can be sent again; a stream cannot."""
    import httpx  # noqa: PLC0415 - only httpx calls this

    try:
        request.content  # noqa: B018 - raises when the body is a stream not read
    except httpx.RequestNotRead:
        return False
    return True


def _rewinder(body: object) -> Any:
    """requests: how to make ``body`` sendable again, or None when it cannot be (a stream).
    Bytes and text need nothing; a seekable file goes back to where it stood now."""
    if body is None or isinstance(body, bytes | str):
        return lambda: None
    seek, tell = getattr(body, "seek", None), getattr(body, "tell", None)
    if callable(seek) and callable(tell):
        with contextlib.suppress(OSError, ValueError):
            start = tell()
            return lambda: seek(start)
    return None
