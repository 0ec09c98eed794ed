"""Bearer tokens attached for you: auth adapters for requests and httpx over a requester.

:class:`TokenAuth` takes a :class:`~token_worker.client.client.TokenClient` (or anything with
its ``get_token``) and works as ``requests.get(url, auth=...)`` and ``httpx.Client(auth=...)``;
:class:`AsyncTokenAuth` takes an :class:`~token_worker.client.async_client.AsyncTokenClient`
and works as ``httpx.AsyncClient(auth=...)``. Each request gets ``Authorization: Bearer
<token>`` from the client (its cache answers nearly every time, without NATS). When the API
answers 401, the adapter asks for a fresh token once (``skip_cache``) and sends the request
once more with it; a second 401 is the caller's.

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

import contextlib
from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any, Protocol

from token_worker.client.exchange import Token

__all__ = ["AsyncTokenAuth", "TokenAuth"]

UNAUTHORIZED = 401

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


class TokenAuth(_Base):
    """``Authorization: Bearer`` from a :class:`TokenClient`, for requests and httpx (see
    the module docstring); share one between threads as the client is shared."""

    def __init__(self, token_client: _Tokens, *, client_id: str | None = None,
                 client_secret: str | None = None, credential: str | None = None,
                 scope: str | None = None) -> None:
        self._tokens = token_client
        self._asking = _Asking(client_id, client_secret, credential, scope)

    def __repr__(self) -> str:
        return f"TokenAuth({self._asking!r})"

    def token(self, *, fresh: bool = False) -> Token:
        """The token a request carries (``fresh``: not the cached one)."""
        return self._tokens.get_token(**self._asking.arguments(), skip_cache=fresh)

    # --- requests ---------------------------------------------------------------------------

    def __call__(self, request: Any) -> Any:
        """requests: set the header, and look at the answer (a response hook)."""
        request.headers["Authorization"] = _bearer(self.token())
        rewind = _rewinder(request.body)
        retried = False

        def on_response(response: Any, **send: Any) -> Any:
            nonlocal retried
            if response.status_code != UNAUTHORIZED or retried:
                return response
            retried = True
            fresh = self.token(fresh=True)
            if rewind is None:
                return response  # a streamed body cannot be sent again
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
        request.headers["Authorization"] = _bearer(self.token())
        response = yield request
        if response.status_code != UNAUTHORIZED:
            return
        fresh = self.token(fresh=True)
        if _replayable(request):
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
                 scope: str | None = None) -> None:
        self._tokens = token_client
        self._asking = _Asking(client_id, client_secret, credential, scope)

    def __repr__(self) -> str:
        return f"AsyncTokenAuth({self._asking!r})"

    async def token(self, *, fresh: bool = False) -> Token:
        """The token a request carries (``fresh``: not the cached one)."""
        return await self._tokens.get_token(**self._asking.arguments(), skip_cache=fresh)

    async def async_auth_flow(self, request: httpx.Request
                              ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """httpx.AsyncClient: the header, and one retry after a 401."""
        request.headers["Authorization"] = _bearer(await self.token())
        response = yield request
        if response.status_code != UNAUTHORIZED:
            return
        fresh = await self.token(fresh=True)
        if _replayable(request):
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
