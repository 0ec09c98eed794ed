"""The shipped NATS authorization (deploy/nats/authorization.conf) on a real nats-server,
and NKey / operator-mode (JWT) servers that accept what token_worker.nkey_auth signs.

What is proven here is the NATS side of the security model: which user may publish and
subscribe to what. The server is started with the shipped file's text, unchanged; the
passwords it references come from the server's environment. The worker is the real one
(:class:`TokenWorker`, logged in as the ``token-worker`` user, holding the ``orders`` and
``billing`` credentials, asking the real IdP); services and the monitor are nats-py clients.
Only the test of the worker role's own publish permission uses a nats-py client logged in
as the worker user (a stand-in for a compromised worker: the real one never tries).

Nothing waits for a message to not arrive: each "nothing arrived" is checked after a PING
round trip that orders it behind whatever could have arrived (NATS delivers in order), and
against the server's own view of the subscriptions (/connz).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats as nats_py
import pytest
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from tests.conftest import remember_secret
from tests.helpers import wait_until
from tests.integration.helpers import BASIC, DEMO, SHIPPED_PASSWORDS, make_config
from tests.integration.processes import IdpServer, NatsServer
from tests.kubelet_volume import KubeletVolume, credential_files
from tests.nats_jwt import OperatorMode, creds_text, new_account, new_user, user_jwt
from token_worker.config import CredentialsConfig, Secret
from token_worker.nkey_auth import NatsAuth, load_creds_file, load_nkey_file
from token_worker.serve.worker import TokenWorker


def start_server(config_text: str) -> NatsServer:
    return NatsServer(config_text).start()


class Errors:
    """The asynchronous errors (permission violations) a nats-py client was sent; nats-py
    hands each to its callback before it reads on, so a flush returns after them."""

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
    asyncio.run(asyncio.wait_for(test(), 60))


async def round_trip(client: Any) -> None:
    """A PING the server answers only after processing everything ``client`` sent before
    this call. nats-py writes a flush's PING straight to the socket, ahead of the publishes
    and subscriptions still in its buffer (its flusher task writes those): the first flush
    lets the flusher run, the second flush's PING follows them."""
    await client.flush()
    await client.flush()


def credentials_volume(root: Path, **credentials: tuple[str, ...]) -> Path:
    volume = KubeletVolume(root)
    files: dict[str, str] = {}
    for name, (client_id, secret, *method) in credentials.items():
        files.update(credential_files(name, client_id, secret,
                                      **({"auth_method": method[0]} if method else {})))
    volume.write(files)
    return volume.root


@pytest.fixture
def shipped_worker(shipped_server: NatsServer, idp: IdpServer, tmp_path: Path,
                   start_worker: Callable[..., TokenWorker]) -> TokenWorker:
    """The real worker as the shipped file's ``token-worker`` user: ``orders`` is the IdP's
    demo client, ``billing`` its basic one (client_secret_basic)."""
    directory = credentials_volume(tmp_path / "credentials", orders=DEMO,
                                   billing=(*BASIC, "client_secret_basic"))
    config = make_config(shipped_server.url, idp.url)
    return start_worker(dataclasses.replace(
        config, credentials=CredentialsConfig(directory=str(directory)),
        nats=dataclasses.replace(config.nats, username="token-worker",
                                 password=Secret(SHIPPED_PASSWORDS["token-worker"]))))


def answered(worker: TokenWorker) -> float:
    """Requests the worker answered so far, once none is still in its pool (a request it
    received before a later one is in the pool by the time the later one is answered)."""
    registry = worker.metrics.registry
    wait_until(lambda: registry.get_sample_value("token_worker_in_flight") == 0,
               what="the worker's pool to empty")
    return sum(sample.value for family in registry.collect() for sample in family.samples
               if sample.name == "token_worker_requests_total")


def a_token(reply: Msg, credential: str) -> str:
    """The access token of a genuine named reply (registered for the leak scan)."""
    body = json.loads(reply.data)
    assert body.get("credential") == credential and body.get("token_type") == "Bearer", body
    remember_secret(body["access_token"])
    return str(body["access_token"])


async def first_request(client: Any, subject: str, payload: bytes) -> Msg:
    """A request retried while the server reports no responders: in operator mode the
    worker's interest can reach the requester's view a moment after the worker's flush."""
    for _ in range(50):
        try:
            return await client.request(subject, payload, timeout=5)
        except NoRespondersError:
            await asyncio.sleep(0.1)
    pytest.fail(f"no responder on {subject} after 5 s")


def subscriptions_of(server: NatsServer, name: str) -> list[str]:
    """The subjects the server holds for the connection called ``name``."""
    connection = next(c for c in server.connz() if c.get("name") == name)
    return [sub["subject"] for sub in connection.get("subscriptions_list_detail", [])]


def test_a_service_gets_its_own_credential_and_the_server_refuses_anothers(
        shipped_server: NatsServer, shipped_worker: TokenWorker, idp: IdpServer) -> None:
    async def scenario() -> None:
        orders, orders_errors = await connect(shipped_server, "orders",
                                              inbox_prefix="_INBOX.orders")
        reply = await first_request(orders, "token.named.orders", b'{"request_id": "r-1"}')
        assert idp.introspect(a_token(reply, "orders"), *DEMO)["client_id"] == DEMO[0]

        await orders.publish("token.named.billing", b'{"request_id": "r-2"}',
                             reply="_INBOX.orders.x")
        await round_trip(orders)  # the server has refused it: its -ERR came before the PONG
        assert any('permissions violation for publish to "token.named.billing"' in error
                   for error in orders_errors)
        # A later request from the same connection: had the worker been sent the refused
        # one, it would have received it first.
        a_token(await orders.request("token.named.orders", b'{"request_id": "r-3"}',
                                     timeout=5), "orders")
        await orders.close()

    run(scenario)
    assert answered(shipped_worker) == 2  # r-1 and r-3; billing's never reached it


def test_a_service_cannot_listen_to_requests_everything_or_another_inbox(
        shipped_server: NatsServer, shipped_worker: TokenWorker, idp: IdpServer) -> None:
    forbidden = ("token.request", "token.named.*", ">", "_INBOX.billing.>", "_INBOX.>")

    async def scenario() -> None:
        orders, orders_errors = await connect(shipped_server, "orders", name="orders",
                                              inbox_prefix="_INBOX.orders")
        billing, _ = await connect(shipped_server, "billing", inbox_prefix="_INBOX.billing")
        taps = [await orders.subscribe(subject) for subject in forbidden]
        await round_trip(orders)  # every SUB processed, every refusal received
        for subject in forbidden:
            assert any(f'permissions violation for subscription to "{subject.lower()}"'
                       in error for error in orders_errors), subject
        assert subscriptions_of(shipped_server, "orders") == []  # the server kept none

        reply = await first_request(billing, "token.named.billing", b'{"request_id": "b-1"}')
        assert idp.introspect(a_token(reply, "billing"), *BASIC)["client_id"] == BASIC[0]
        # billing has its reply: the request and the reply have passed the server, and
        # anything they sent orders' way is queued before the PONG of this flush.
        await round_trip(orders)
        assert [tap.pending_msgs for tap in taps] == [0] * len(forbidden)
        await asyncio.gather(orders.close(), billing.close())

    run(scenario)


def test_the_worker_user_may_publish_replies_only(shipped_server: NatsServer) -> None:
    """The worker role's own permission, tried by a nats-py client logged in as the worker
    user (what a compromised worker could do; the real one only replies)."""

    async def scenario() -> None:
        as_worker, worker_errors = await connect(shipped_server, "token-worker")
        orders, _ = await connect(shipped_server, "orders", inbox_prefix="_INBOX.orders")
        unsolicited = await orders.subscribe("_INBOX.orders.unsolicited")
        await round_trip(orders)
        for subject in ("_INBOX.orders.unsolicited", "token.named.orders", "token.request"):
            await as_worker.publish(subject, b"{}")
        await round_trip(as_worker)  # the three publishes processed (and refused)
        assert sum("permissions violation for publish" in error
                   for error in worker_errors) == 3
        await round_trip(orders)  # a delivery from those publishes would be ahead of its PONG
        assert unsolicited.pending_msgs == 0
        await asyncio.gather(orders.close(), as_worker.close())

    run(scenario)


def test_a_wildcard_monitor_sees_no_request_and_no_reply(
        shipped_server: NatsServer, shipped_worker: TokenWorker) -> None:
    async def scenario() -> None:
        orders, _ = await connect(shipped_server, "orders", inbox_prefix="_INBOX.orders")
        monitor, monitor_errors = await connect(shipped_server, "monitor", name="monitor")
        everything = await monitor.subscribe(">")
        await round_trip(monitor)
        assert subscriptions_of(shipped_server, "monitor") == [">"]
        await first_request(orders, "token.named.orders", b'{"request_id": "r-first"}')
        for index in range(20):
            reply = await orders.request("token.named.orders",
                                         f'{{"request_id": "r-{index}"}}'.encode(), timeout=5)
            a_token(reply, "orders")
        await monitor.publish("token.named.orders", b"{}")
        # Every request and reply has passed the server (orders has them all): what the
        # monitor was sent of them is ahead of this PONG, with the refusal of its publish.
        await round_trip(monitor)
        assert everything.pending_msgs == 0
        assert any("permissions violation for publish" in error for error in monitor_errors)
        await asyncio.gather(orders.close(), monitor.close())

    run(scenario)
    assert answered(shipped_worker) == 21  # the monitor's publish never reached it


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
        tmp_path: Path, operator_mode: tuple[OperatorMode, NatsServer], idp: IdpServer,
        start_worker: Callable[..., TokenWorker]) -> None:
    """The operator-mode variant of the model (deploy/nats/operator-mode.md): the same
    permissions carried in user JWTs, the real worker signing with its creds file."""
    mode, server = operator_mode
    worker_creds, worker_user = mode.user_creds(
        tmp_path, "token-worker",
        sub={"allow": ["token.request", "token.named.*", "$SRV.>"]}, resp={"max": 1})
    orders_creds, orders_user = mode.user_creds(
        tmp_path, "orders", pub={"allow": ["token.named.orders"]},
        sub={"allow": ["_INBOX.orders.>"]})
    remember_secret(worker_user.seed, orders_user.seed)
    directory = credentials_volume(tmp_path / "credentials", orders=DEMO,
                                   billing=(*BASIC, "client_secret_basic"))
    config = make_config(server.url, idp.url)
    worker = start_worker(dataclasses.replace(
        config, credentials=CredentialsConfig(directory=str(directory)),
        nats=dataclasses.replace(config.nats, creds_file=str(worker_creds))))

    async def scenario() -> None:
        orders_errors = Errors()
        orders = await nats_py.connect(server.url, user_credentials=str(orders_creds),
                                       allow_reconnect=False, error_cb=orders_errors.callback,
                                       inbox_prefix="_INBOX.orders", name="orders")
        reply = await first_request(orders, "token.named.orders", b"{}")
        assert idp.introspect(a_token(reply, "orders"), *DEMO)["client_id"] == DEMO[0]
        await orders.publish("token.named.billing", b"{}", reply="_INBOX.orders.x")
        await orders.subscribe("token.request")
        await round_trip(orders)  # both processed: their refusals came before the PONG
        assert any('publish to "token.named.billing"' in error for error in orders_errors)
        assert any('subscription to "token.request"' in error for error in orders_errors)
        assert "token.request" not in subscriptions_of(server, "orders")
        # Had the worker been sent the refused request, it would have come before this one.
        a_token(await orders.request("token.named.orders", b"{}", timeout=5), "orders")
        await orders.close()

    run(scenario)
    assert answered(worker) == 2


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
