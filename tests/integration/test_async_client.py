"""AsyncTokenClient against a real worker, nats-server and IdP, over one nats-py connection:
a thousand concurrent calls, the IdP asked once per client, the event loop never held."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import nats as nats_py
import pytest

from tests.conftest import remember_secret, report_figure
from tests.integration.helpers import DEMO, WorkerProcess, make_config
from tests.integration.processes import IdpServer
from token_worker import AsyncTokenClient, ClientClosed, NoWorkerAnswered, TokenRequestFailed

CLIENTS = [(f"async-{index:02d}", f"async-secret-{index:02d}-for-tests") for index in range(20)]
remember_secret(*(secret for _, secret in CLIENTS))
CALLS = 1000
STARTED_PER_TURN = 100
"""Calls started per turn of the event loop: a thousand requests of an app arrive over
several turns, and a test that starts them all in one measures that one turn, not the
client."""
LAG_TICK = 0.005
"""Seconds the lag probe sleeps between two looks at the loop's clock."""


@pytest.fixture(scope="module")
def twenty_idp() -> Iterator[IdpServer]:
    """An IdP that knows the twenty clients of the concurrency test."""
    server = IdpServer(clients=[
        {"client_id": client_id, "client_secret": secret,
         "token_endpoint_auth_method": "client_secret_post"} for client_id, secret in CLIENTS])
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def probe_lag(stop: asyncio.Event, worst: list[float]) -> None:
    """The event loop's lag: how long the loop worked before a short sleep could end, at
    its worst. Counted in the loop thread's CPU time (a sleep of ``LAG_TICK`` ends late
    only by what the loop did meanwhile), so other processes on a busy machine, which delay
    the wall clock's wake-up too, do not count as the client holding the loop."""
    while not stop.is_set():
        before = time.thread_time()
        await asyncio.sleep(LAG_TICK)
        worst[0] = max(worst[0], time.thread_time() - before)


def test_a_thousand_concurrent_calls_over_twenty_clients_ask_the_idp_once_per_client(
        nats_server, twenty_idp):
    # The worker in a process of its own: the lag measured is the client's and nats-py's,
    # not the GIL shared with a worker's threads.
    worker = WorkerProcess(env={"NATS_URL": nats_server.url, "IDP_URL": twenty_idp.url})
    try:
        worker.wait_for_log("serving")
        run_thousand(nats_server.url, twenty_idp)
    finally:
        worker.stop()


def run_thousand(nats_url: str, twenty_idp: IdpServer) -> None:
    calls_before = twenty_idp.token_calls()

    async def main() -> tuple[list[Any], list[int], float, float]:
        nc = await nats_py.connect(nats_url)
        try:
            clients = [AsyncTokenClient(nc) for _ in range(20)]
            stop, worst = asyncio.Event(), [0.0]
            probe = asyncio.ensure_future(probe_lag(stop, worst))
            await asyncio.sleep(LAG_TICK * 4)  # the probe runs before the load starts
            started = time.monotonic()
            calls = []
            for index in range(CALLS):  # all outstanding at once, started as an app would:
                calls.append(asyncio.ensure_future(  # not all in one turn of the loop
                    clients[index % 20].get_token(*CLIENTS[(index // 20) % 20])))
                if index % STARTED_PER_TURN == STARTED_PER_TURN - 1:
                    await asyncio.sleep(0)
            tokens = await asyncio.gather(*calls)
            took = time.monotonic() - started
            stop.set()
            await probe
            sent = [client.requests_sent for client in clients]
            for client in clients:
                await client.close()
            return tokens, sent, worst[0], took
        finally:
            await nc.close()

    tokens, sent, lag, took = asyncio.run(main())
    remember_secret(*(token.access_token for token in tokens))
    idp_calls = twenty_idp.token_calls() - calls_before
    assert len(tokens) == CALLS and all(token.access_token for token in tokens)
    assert len({token.access_token for token in tokens}) == 20  # one token per client id
    assert idp_calls <= 20
    assert sent == [20] * 20  # one request per key and client: the others joined or hit
    assert lag <= 0.1
    report_figure(f"AsyncTokenClient: {CALLS} concurrent get_token over 20 clients on one "
                  f"nats-py connection in {took * 1000:.0f} ms: {idp_calls} IdP calls, "
                  f"{sum(sent)} NATS requests, worst event-loop lag {lag * 1000:.1f} ms")


def test_tokens_errors_and_no_worker_as_the_threaded_client_reports_them(nats_server, idp,
                                                                         start_worker):
    async def no_worker() -> float:
        nc = await nats_py.connect(nats_server.url)
        try:
            client = AsyncTokenClient(nc, retries=0)
            started = time.monotonic()
            with pytest.raises(NoWorkerAnswered, match="no worker is subscribed"):
                await client.get_token(*DEMO)
            return time.monotonic() - started
        finally:
            await nc.close()

    assert asyncio.run(no_worker()) < 0.5  # the server says so at once
    start_worker(make_config(nats_server.url, idp.url))

    async def served() -> None:
        nc = await nats_py.connect(nats_server.url)
        try:
            async with AsyncTokenClient(nc, inbox_prefix="_INBOX.orders") as client:
                token = await client.get_token(*DEMO)
                remember_secret(token.access_token)
                assert token.token_type == "Bearer" and token.expires_in() > 200
                cached = await client.get_token(*DEMO)  # from the cache
                assert cached.access_token == token.access_token
                fresh = await client.get_token(*DEMO, skip_cache=True)
                remember_secret(fresh.access_token)
                assert fresh.access_token != token.access_token
                assert client.requests_sent == 2
                assert client.inbox.startswith("_INBOX.orders.")
                with pytest.raises(TokenRequestFailed) as refused:
                    await client.get_token(DEMO[0], "wrong-secret")
                assert refused.value.error_code == "invalid_client"
            with pytest.raises(ClientClosed):
                await client.get_token(*DEMO)
        finally:
            await nc.close()

    asyncio.run(served())
