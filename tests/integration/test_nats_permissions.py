"""The shipped NATS authorization (deploy/nats/authorization.conf) on a real nats-server,
and NKey / operator-mode (JWT) servers that accept what token_worker.nkey_auth signs.

What is proven here is the NATS side of the security model: which user may publish and
subscribe to what. The server is started with the shipped file's text, unchanged; the
passwords it references come from the server's environment.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats as nats_py
import pytest
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from tests.integration.helpers import SHIPPED_PASSWORDS
from tests.integration.processes import NatsServer
from tests.nats_jwt import OperatorMode, creds_text, new_account, new_user, user_jwt
from token_worker.nkey_auth import NatsAuth, load_creds_file, load_nkey_file

WAIT = 0.5
"""Seconds to let a message that must not arrive have its chance to arrive."""


def start_server(config_text: str) -> NatsServer:
    return NatsServer(config_text).start()


class Errors:
    """The asynchronous errors (permission violations) a nats-py client was sent."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def callback(self, error: Exception) -> None:
        self.seen.append(str(error).lower())  # nats-py lowercases the server's -ERR

    def __iter__(self) -> Iterator[str]:
        return iter(self.seen)


async def connect(server: NatsServer, user: str, **options: Any) -> tuple[Any, Errors]:
    errors = Errors()
    client = await nats_py.connect(server.url, user=user, password=SHIPPED_PASSWORDS[user],
                                   allow_reconnect=False, error_cb=errors.callback, **options)
    return client, errors


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


async def worker_stub(client: Any, seen: list[str]) -> None:
    """Serve the subjects a token-worker serves, replying with the subject it came on."""

    async def answer(message: Msg) -> None:
        seen.append(message.subject)
        await message.respond(json.dumps({"served": message.subject}).encode())

    for subject in ("token.request", "token.named.*"):
        await client.subscribe(subject, queue="token-workers", cb=answer)
    await client.subscribe("$SRV.PING", cb=answer)
    await client.flush()


async def first_request(client: Any, subject: str, payload: bytes) -> Msg:
    """A request retried while the server reports no responders: in operator mode the
    worker's interest can reach the requester's view a moment after the worker's flush."""
    for _ in range(50):
        try:
            return await client.request(subject, payload, timeout=5)
        except NoRespondersError:
            await asyncio.sleep(0.1)
    pytest.fail(f"no responder on {subject} after 5 s")


def test_a_service_gets_its_own_credential_and_the_server_refuses_anothers(
        shipped_server: NatsServer) -> None:
    async def scenario() -> None:
        worker, worker_errors = await connect(shipped_server, "token-worker")
        orders, orders_errors = await connect(shipped_server, "orders",
                                              inbox_prefix="_INBOX.orders")
        seen: list[str] = []
        await worker_stub(worker, seen)

        reply = await first_request(orders, "token.named.orders", b'{"request_id": "r-1"}')
        assert json.loads(reply.data) == {"served": "token.named.orders"}

        await orders.publish("token.named.billing", b'{"request_id": "r-2"}',
                             reply="_INBOX.orders.x")
        await orders.flush()
        await asyncio.sleep(WAIT)
        assert seen == ["token.named.orders"]
        assert any('permissions violation for publish to "token.named.billing"' in error
                   for error in orders_errors)
        assert worker_errors.seen == []
        await orders.close()
        await worker.close()

    run(scenario)


def test_a_service_cannot_listen_to_requests_everything_or_another_inbox(
        shipped_server: NatsServer) -> None:
    async def scenario() -> None:
        worker, _ = await connect(shipped_server, "token-worker")
        orders, orders_errors = await connect(shipped_server, "orders",
                                              inbox_prefix="_INBOX.orders")
        billing, _ = await connect(shipped_server, "billing", inbox_prefix="_INBOX.billing")
        await worker_stub(worker, [])
        stolen: list[str] = []

        async def steal(message: Msg) -> None:
            stolen.append(message.subject)

        for subject in ("token.request", "token.named.*", ">", "_INBOX.billing.>", "_INBOX.>"):
            await orders.subscribe(subject, cb=steal)
        await orders.flush()
        reply = await first_request(billing, "token.named.billing", b'{"request_id": "b-1"}')
        assert json.loads(reply.data) == {"served": "token.named.billing"}
        await asyncio.sleep(WAIT)

        assert stolen == []
        for subject in ("token.request", "token.named.*", ">", "_INBOX.billing.>", "_INBOX.>"):
            assert any(f'permissions violation for subscription to "{subject.lower()}"' in error
                       for error in orders_errors), subject
        await asyncio.gather(orders.close(), billing.close(), worker.close())

    run(scenario)


def test_the_worker_publishes_replies_only(shipped_server: NatsServer) -> None:
    async def scenario() -> None:
        worker, worker_errors = await connect(shipped_server, "token-worker")
        orders, _ = await connect(shipped_server, "orders", inbox_prefix="_INBOX.orders")
        received: list[str] = []

        async def record(message: Msg) -> None:
            received.append(message.subject)

        await orders.subscribe("_INBOX.orders.unsolicited", cb=record)
        await orders.flush()
        for subject in ("_INBOX.orders.unsolicited", "token.named.orders", "token.request"):
            await worker.publish(subject, b"{}")
        await worker.flush()
        await asyncio.sleep(WAIT)

        assert received == []
        assert sum("permissions violation for publish" in error for error in worker_errors) == 3
        await asyncio.gather(orders.close(), worker.close())

    run(scenario)


def test_a_wildcard_monitor_sees_no_request_and_no_reply(shipped_server: NatsServer) -> None:
    async def scenario() -> None:
        worker, _ = await connect(shipped_server, "token-worker")
        orders, _ = await connect(shipped_server, "orders", inbox_prefix="_INBOX.orders")
        monitor, monitor_errors = await connect(shipped_server, "monitor", name="monitor")
        await worker_stub(worker, [])
        recorded: list[tuple[str, bytes]] = []

        async def record(message: Msg) -> None:
            recorded.append((message.subject, message.data))

        await monitor.subscribe(">", cb=record)
        await monitor.flush()
        await first_request(orders, "token.named.orders", b'{"request_id": "r-first"}')
        for index in range(20):
            reply = await orders.request("token.named.orders",
                                         f'{{"request_id": "r-{index}"}}'.encode(), timeout=5)
            assert reply.data
        await monitor.publish("token.named.orders", b"{}")
        await monitor.flush()
        await asyncio.sleep(WAIT)

        assert recorded == []
        monitor_conn = next(c for c in shipped_server.connz() if c.get("name") == "monitor")
        assert [s["subject"] for s in monitor_conn.get("subscriptions_list_detail", [])] == [">"]
        assert any("permissions violation for publish" in error for error in monitor_errors)
        await asyncio.gather(orders.close(), monitor.close(), worker.close())

    run(scenario)


# --- NKey and operator-mode (JWT) servers accept what nats_auth signs ------------------


def raw_handshake(server: NatsServer, auth: NatsAuth) -> str:
    """INFO -> CONNECT (with ``auth``'s fields) -> PING; the server's first answer line."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        stream = sock.makefile("rb")
        line = stream.readline().decode()
        assert line.startswith("INFO ")
        info = json.loads(line[5:])
        assert info.get("nonce"), "the server asks for a signature"
        connect = {"verbose": False, "pedantic": False, "protocol": 1, "lang": "python3",
                   "version": "test", **auth.connect_auth_fields(info)}
        sock.sendall(f"CONNECT {json.dumps(connect)}\r\nPING\r\n".encode())
        return stream.readline().decode().strip()


@pytest.fixture
def operator_mode() -> Iterator[tuple[OperatorMode, NatsServer]]:
    mode = OperatorMode()
    server = start_server(mode.server_config())
    try:
        yield mode, server
    finally:
        server.cleanup()


def test_operator_mode_accepts_a_creds_file_signed_by_nats_auth(
        tmp_path: Path, operator_mode: tuple[OperatorMode, NatsServer]) -> None:
    mode, server = operator_mode
    path, _ = mode.user_creds(tmp_path, "token-worker")
    assert raw_handshake(server, load_creds_file(path)) == "PONG"


def test_operator_mode_refuses_a_user_of_an_unknown_account(
        tmp_path: Path, operator_mode: tuple[OperatorMode, NatsServer]) -> None:
    _, server = operator_mode
    user = new_user()
    path = tmp_path / "untrusted.creds"
    path.write_text(creds_text(user_jwt(user, new_account()), user.seed))
    assert raw_handshake(server, load_creds_file(path)) == "-ERR 'Authorization Violation'"


def test_operator_mode_uses_the_rotated_creds_file_on_the_next_connect(
        tmp_path: Path, operator_mode: tuple[OperatorMode, NatsServer]) -> None:
    mode, server = operator_mode
    path, _ = mode.user_creds(tmp_path, "token-worker")
    auth = load_creds_file(path)
    assert raw_handshake(server, auth) == "PONG"
    stranger = new_user()
    path.write_text(creds_text(user_jwt(stranger, new_account()), stranger.seed))
    assert raw_handshake(server, auth) == "-ERR 'Authorization Violation'"
    mode.user_creds(tmp_path, "token-worker")
    assert raw_handshake(server, auth) == "PONG"


def test_operator_mode_user_permissions_refuse_another_services_credential(
        tmp_path: Path, operator_mode: tuple[OperatorMode, NatsServer]) -> None:
    """The operator-mode variant of the model (deploy/nats/operator-mode.md): the same
    permissions carried in user JWTs."""
    mode, server = operator_mode
    worker_creds, _ = mode.user_creds(
        tmp_path, "token-worker",
        sub={"allow": ["token.request", "token.named.*", "$SRV.>"]}, resp={"max": 1})
    orders_creds, _ = mode.user_creds(
        tmp_path, "orders", pub={"allow": ["token.named.orders"]},
        sub={"allow": ["_INBOX.orders.>"]})

    async def scenario() -> None:
        worker_errors, orders_errors = Errors(), Errors()
        worker = await nats_py.connect(server.url, user_credentials=str(worker_creds),
                                       allow_reconnect=False, error_cb=worker_errors.callback)
        orders = await nats_py.connect(server.url, user_credentials=str(orders_creds),
                                       allow_reconnect=False, error_cb=orders_errors.callback,
                                       inbox_prefix="_INBOX.orders")
        seen: list[str] = []
        await worker_stub(worker, seen)
        reply = await first_request(orders, "token.named.orders", b"{}")
        assert json.loads(reply.data) == {"served": "token.named.orders"}
        await orders.publish("token.named.billing", b"{}")
        await orders.subscribe("token.request")
        await orders.flush()
        await asyncio.sleep(WAIT)
        assert seen == ["token.named.orders"]
        assert any('publish to "token.named.billing"' in error for error in orders_errors)
        assert any('subscription to "token.request"' in error for error in orders_errors)
        await asyncio.gather(orders.close(), worker.close())

    run(scenario)


@pytest.fixture
def nkey_user(tmp_path: Path) -> Iterator[tuple[Path, NatsServer]]:
    user = new_user()
    path = tmp_path / "user.nk"
    path.write_text(user.seed + "\n")
    server = start_server(f'authorization {{ users = [ {{ nkey: "{user.public}" }} ] }}\n')
    try:
        yield path, server
    finally:
        server.cleanup()


def test_nkey_users_server_accepts_the_seed_file_signed_by_nats_auth(
        nkey_user: tuple[Path, NatsServer]) -> None:
    path, server = nkey_user
    assert raw_handshake(server, load_nkey_file(path)) == "PONG"


def test_nkey_users_server_refuses_an_unknown_nkey(
        tmp_path: Path, nkey_user: tuple[Path, NatsServer]) -> None:
    _, server = nkey_user
    stranger = tmp_path / "stranger.nk"
    stranger.write_text(new_user().seed)
    assert raw_handshake(server, load_nkey_file(stranger)) == "-ERR 'Authorization Violation'"
