"""The auth adapters' 401 rule without any server: httpx's MockTransport plays the API, a
fake token client plays TokenClient and counts the fresh tokens it was asked for."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

import pytest

from tests.fakes import Clock
from token_worker.client.exchange import Token

httpx = pytest.importorskip("httpx")  # the [httpx] extra: tox installs it

from token_worker.auth import AsyncTokenAuth, TokenAuth  # noqa: E402 - after httpx, as apps
from token_worker.client.auth import RENEWAL_GAP  # noqa: E402


class Tokens:
    """A TokenClient's get_token: the cached token, or a new one for skip_cache."""

    def __init__(self) -> None:
        self._numbers = itertools.count(1)
        self.current = self._issue()
        self.fresh_asked = 0
        self._lock = threading.Lock()

    def _issue(self) -> Token:
        return Token(f"tok-{next(self._numbers)}", "Bearer", 2e9, "", "r")

    def get_token(self, client_id: str | None = None, client_secret: str | None = None,
                  scope: str | None = None, *, credential: str | None = None,
                  skip_cache: bool = False) -> Token:
        with self._lock:
            if skip_cache:
                self.fresh_asked += 1
                self.current = self._issue()
            return self.current


class AsyncTokens(Tokens):
    async def get_token(self, *args: Any, **kwargs: Any) -> Token:  # type: ignore[override]
        await asyncio.sleep(0)
        return super().get_token(*args, **kwargs)


def api(refused: set[str]) -> tuple[httpx.MockTransport, list[str]]:
    """An API answering 401 to the tokens in ``refused`` ("*": to every token)."""
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        seen.append(token)
        return httpx.Response(401 if "*" in refused or token in refused else 200)
    return httpx.MockTransport(answer), seen


def test_a_refused_token_is_renewed_once_and_the_request_sent_again():
    tokens = Tokens()
    transport, seen = api({"tok-1"})
    auth = TokenAuth(tokens, client_id="svc", client_secret="s", clock=Clock().monotonic)
    with httpx.Client(transport=transport, auth=auth) as client:
        assert client.get("http://api.test/").status_code == 200
    assert seen == ["tok-1", "tok-2"] and tokens.fresh_asked == 1


def test_an_api_refusing_every_token_gets_one_renewal_per_gap_not_one_per_request():
    clock, tokens = Clock(), Tokens()
    transport, seen = api({"*"})
    auth = TokenAuth(tokens, client_id="svc", client_secret="s", clock=clock.monotonic)
    with httpx.Client(transport=transport, auth=auth) as client:
        assert [client.get("http://api.test/").status_code for _ in range(50)] == [401] * 50
        assert tokens.fresh_asked == 1 and len(seen) == 51
        clock.advance(RENEWAL_GAP - 0.01)
        client.get("http://api.test/")
        assert tokens.fresh_asked == 1  # still within the gap: the 401 is the caller's
        clock.advance(0.01)
        client.get("http://api.test/")
        assert tokens.fresh_asked == 2  # a token refused a gap later may be revoked: renew


def test_adapters_made_per_request_share_the_clients_renewal_memory():
    """``requests.get(url, auth=TokenAuth(...))`` makes an adapter per call: the memory of
    the last renewal is the token client's, so the 401 storm still costs one renewal."""
    clock, tokens = Clock(), Tokens()
    transport, seen = api({"*"})
    with httpx.Client(transport=transport) as client:
        for _ in range(30):
            auth = TokenAuth(tokens, client_id="svc", client_secret="s", clock=clock.monotonic)
            assert client.get("http://api.test/", auth=auth).status_code == 401
    assert tokens.fresh_asked == 1 and len(seen) == 31
    other_scope = TokenAuth(tokens, client_id="svc", client_secret="s", scope="admin",
                            clock=clock.monotonic)
    assert other_scope.renew(tokens.current) is not None  # another scope: its own memory
    assert tokens.fresh_asked == 2


def test_a_token_another_request_renewed_meanwhile_is_used_without_asking_again():
    tokens = Tokens()
    transport, seen = api({"tok-1"})
    auth = TokenAuth(tokens, client_id="svc", client_secret="s", clock=Clock().monotonic)
    refused = tokens.current
    tokens.get_token(skip_cache=True)  # another request renewed it: tok-2 is cached now
    assert auth.renew(refused) == tokens.current
    assert tokens.fresh_asked == 1
    with httpx.Client(transport=transport, auth=auth) as client:
        assert client.get("http://api.test/").status_code == 200
    assert seen == ["tok-2"]


def test_threads_that_see_the_same_401_renew_once():
    tokens = Tokens()
    auth = TokenAuth(tokens, client_id="svc", client_secret="s", clock=Clock().monotonic)
    refused = tokens.current
    renewed: list[Token | None] = []
    threads = [threading.Thread(target=lambda: renewed.append(auth.renew(refused)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tokens.fresh_asked == 1
    assert {token.access_token for token in renewed if token} == {"tok-2"}


def test_the_async_adapter_follows_the_same_rule():
    clock, tokens = Clock(), AsyncTokens()
    transport, seen = api({"*"})
    auth = AsyncTokenAuth(tokens, client_id="svc", client_secret="s", clock=clock.monotonic)

    async def main() -> list[int]:
        async with httpx.AsyncClient(transport=transport, auth=auth) as client:
            return [(await client.get("http://api.test/")).status_code for _ in range(20)]

    assert asyncio.run(main()) == [401] * 20
    assert tokens.fresh_asked == 1 and len(seen) == 21
    clock.advance(RENEWAL_GAP)
    asyncio.run(main())
    assert tokens.fresh_asked == 2
