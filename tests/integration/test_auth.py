"""The auth adapters against an API that checks each token at the IdP (RFC 7662
introspection on the dev IdP), through a real worker: requests, httpx.Client and
httpx.AsyncClient get 200; an API that answers 401 once gets one retry with a fresh token,
the body sent again; a streamed body is not sent twice."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import nats as nats_py
import pytest

from tests.conftest import remember_secret
from tests.integration.helpers import DEMO, make_config
from tests.integration.processes import IdpServer
from token_worker import AsyncTokenClient, TokenClient
from token_worker.auth import AsyncTokenAuth, TokenAuth

requests = pytest.importorskip("requests")
httpx = pytest.importorskip("httpx")


@dataclass
class Seen:
    """What the API saw of one request."""

    token: str
    body: bytes
    status: int


@dataclass
class CheckingApi:
    """An API that believes a bearer token only if the IdP says it is active (and answers
    401 to its first ``refuse_first`` requests whatever they carry)."""

    idp: IdpServer
    refuse_first: int = 0
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, token: str, body: bytes) -> tuple[int, dict[str, Any]]:
        with self.lock:
            refused = len(self.seen) < self.refuse_first
        status, document = 401, {"error": "invalid_token"}
        if not refused and token:
            found = self.idp.introspect(token, *DEMO)
            if found.get("active"):
                status, document = 200, {"client_id": found["client_id"],
                                         "echo": body.decode()}
        with self.lock:
            self.seen.append(Seen(token, body, status))
        return status, document


def serve(api: CheckingApi) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            length = self.headers.get("Content-Length")
            if length is not None:
                body = self.rfile.read(int(length))
            elif self.headers.get("Transfer-Encoding") == "chunked":
                body = read_chunked(self.rfile)
            else:
                body = b""
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            status, document = api.answer(token, body)
            payload = json.dumps(document).encode()
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer error="invalid_token"')
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_POST = do_GET

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/orders"


def read_chunked(stream: Any) -> bytes:
    body = b""
    while True:
        size = int(stream.readline().strip(), 16)
        chunk = stream.read(size + 2)[:size]
        if not size:
            return body
        body += chunk


@pytest.fixture
def api(idp: IdpServer) -> Iterator[Callable[..., tuple[CheckingApi, str]]]:
    servers: list[ThreadingHTTPServer] = []

    def make(refuse_first: int = 0) -> tuple[CheckingApi, str]:
        checking = CheckingApi(idp, refuse_first)
        server, url = serve(checking)
        servers.append(server)
        return checking, url

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def tokens(nats_server: Any, idp: IdpServer, start_worker: Any) -> Iterator[TokenClient]:
    start_worker(make_config(nats_server.url, idp.url))
    with TokenClient(nats_server.url) as client:
        yield client


def remembered(checking: CheckingApi) -> list[str]:
    found = [seen.token for seen in checking.seen]
    remember_secret(*found)
    return found


def test_requests_and_httpx_get_200_from_an_api_that_checks_the_token_at_the_idp(tokens,
                                                                                   api):
    checking, url = api()
    auth = TokenAuth(tokens, client_id=DEMO[0], client_secret=DEMO[1])
    assert requests.get(url, auth=auth, timeout=10).json()["client_id"] == DEMO[0]
    with httpx.Client(auth=auth, timeout=10) as client:
        assert client.get(url).json()["client_id"] == DEMO[0]
    assert [seen.status for seen in checking.seen] == [200, 200]
    assert len(set(remembered(checking))) == 1  # the client's cache served the second
    assert DEMO[1] not in repr(auth)


def test_httpx_async_client_gets_200_with_the_async_adapter(nats_server, idp, start_worker,
                                                            api):
    start_worker(make_config(nats_server.url, idp.url))
    checking, url = api()

    async def main() -> int:
        nc = await nats_py.connect(nats_server.url)
        try:
            auth = AsyncTokenAuth(AsyncTokenClient(nc), client_id=DEMO[0],
                                  client_secret=DEMO[1])
            async with httpx.AsyncClient(auth=auth, timeout=10) as client:
                return (await client.post(url, json={"order": 1})).status_code
        finally:
            await nc.close()

    assert asyncio.run(main()) == 200
    remembered(checking)


def test_a_401_gets_one_retry_with_a_fresh_token_and_the_body_again(tokens, api, idp):
    auth = TokenAuth(tokens, client_id=DEMO[0], client_secret=DEMO[1])
    requests.get(api()[1], auth=auth, timeout=10)  # the client now holds a token
    calls = idp.token_calls()
    checking, url = api(refuse_first=1)
    answer = requests.post(url, auth=auth, json={"order": 7}, timeout=10)
    assert answer.status_code == 200 and answer.json()["echo"] == '{"order": 7}'
    assert [response.status_code for response in answer.history] == [401]
    first, second = checking.seen
    assert first.token != second.token and first.body == second.body
    assert idp.token_calls() == calls + 1  # one fresh token, no more

    checking, url = api(refuse_first=1)
    auth = TokenAuth(tokens, client_id=DEMO[0], client_secret=DEMO[1],
                     scope="openid")  # another token: not renewed yet
    with httpx.Client(auth=auth, timeout=10) as client:
        answer = client.post(url, content=b"order=8")
    assert answer.status_code == 200 and answer.json()["echo"] == "order=8"
    assert [seen.status for seen in checking.seen] == [401, 200]
    assert checking.seen[0].token != checking.seen[1].token
    remembered(checking)


def test_a_second_401_is_the_callers(tokens, api):
    checking, url = api(refuse_first=2)
    auth = TokenAuth(tokens, client_id=DEMO[0], client_secret=DEMO[1])
    assert requests.get(url, auth=auth, timeout=10).status_code == 401
    assert len(checking.seen) == 2
    remembered(checking)


def test_an_api_that_refuses_every_token_costs_one_renewal_not_one_per_request(tokens, api,
                                                                              idp):
    """Thirty requests to an API answering 401 to everything: one IdP call, and the
    client's budget left for its real cache misses."""
    auth = TokenAuth(tokens, client_id=DEMO[0], client_secret=DEMO[1])
    requests.get(api()[1], auth=auth, timeout=10)
    calls = idp.token_calls()
    checking, url = api(refuse_first=1000)
    statuses = [requests.get(url, auth=auth, timeout=10).status_code for _ in range(30)]
    assert statuses == [401] * 30
    assert idp.token_calls() == calls + 1
    assert len(checking.seen) == 31  # the first request sent twice, the others once
    tokens.get_token(*DEMO, scope="profile")  # another scope: a real miss, not rate_limited
    remembered(checking)


def test_the_async_adapter_retries_a_401_once_with_a_fresh_token(nats_server, idp,
                                                                 start_worker, api):
    start_worker(make_config(nats_server.url, idp.url))
    checking, url = api(refuse_first=1)

    async def main() -> int:
        nc = await nats_py.connect(nats_server.url)
        try:
            auth = AsyncTokenAuth(AsyncTokenClient(nc), client_id=DEMO[0],
                                  client_secret=DEMO[1])
            async with httpx.AsyncClient(auth=auth, timeout=10) as client:
                return (await client.post(url, json={"order": 9})).status_code
        finally:
            await nc.close()

    assert asyncio.run(main()) == 200
    first, second = checking.seen
    assert first.token != second.token and first.body == second.body
    remembered(checking)


def test_a_streamed_body_is_not_sent_twice_its_401_returned_and_the_next_request_fresh(
        tokens, api):
    auth = TokenAuth(tokens, client_id=DEMO[0], client_secret=DEMO[1])
    checking, url = api(refuse_first=1)
    streamed = requests.post(url, auth=auth, data=(part for part in (b"a", b"b")), timeout=10)
    assert streamed.status_code == 401 and len(checking.seen) == 1
    assert requests.get(url, auth=auth, timeout=10).status_code == 200
    assert checking.seen[1].token != checking.seen[0].token  # refreshed for the next one

    checking, url = api(refuse_first=1)
    with httpx.Client(auth=auth, timeout=10) as client:
        answer = client.post(url, content=(part for part in (b"a", b"b")))
    assert answer.status_code == 401 and len(checking.seen) == 1
    remembered(checking)


def test_adapters_refuse_the_wrong_kind_of_client(tokens):
    auth = TokenAuth(tokens, client_id=DEMO[0], client_secret=DEMO[1])

    async def main() -> None:
        async with httpx.AsyncClient(auth=auth) as client:
            await client.get("http://127.0.0.1:9/never")

    with pytest.raises(TypeError, match="AsyncTokenAuth"):
        asyncio.run(main())
    with pytest.raises(TypeError, match="credential"):
        TokenAuth(tokens, client_id=DEMO[0], credential="orders")
