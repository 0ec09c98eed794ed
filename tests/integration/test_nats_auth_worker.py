"""The worker and the requester on NATS servers secured with NKeys and JWTs, as a new user
runs them: only ``NATS_CREDS`` on an operator-mode server, only ``NATS_NKEY`` on an NKey
users server (over ``tls://`` too, and again after the server restarts), and untrusted
credentials that make ``bin/token-worker`` give up with the server's reason and exit 3.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import remember_secret
from tests.helpers import wait_until
from tests.integration.helpers import BASIC, DEMO, WorkerProcess, make_config, tls_certificates
from tests.integration.processes import IdpServer, NatsServer
from tests.kubelet_volume import KubeletVolume, credential_files
from tests.nats_jwt import OperatorMode, creds_text, new_account, new_user, user_jwt
from token_worker.cli import request_main
from token_worker.client.client import TokenClient
from token_worker.config import Config, CredentialsConfig, NatsConfig, TlsConfig
from token_worker.errors import TokenRequestFailed
from token_worker.serve.worker import TokenWorker

EXIT_NATS_GAVE_UP = 3


def requester_config(url: str, **auth: object) -> NatsConfig:
    return NatsConfig(urls=(url,), reconnect_wait=0.2, max_reconnect=-1, **auth)  # type: ignore[arg-type]


def only(nats_url: str, idp: IdpServer, **nats: object) -> Config:
    """A worker config whose only NATS authentication is ``nats`` (no user, no token)."""
    config = make_config(nats_url, idp.url)
    return dataclasses.replace(config, nats=dataclasses.replace(config.nats, **nats))


def test_a_worker_with_only_nats_creds_serves_on_an_operator_mode_server(
        tmp_path: Path, idp: IdpServer, start_worker: Callable[..., TokenWorker]) -> None:
    mode = OperatorMode()
    server = NatsServer(mode.server_config()).start()
    try:
        worker_creds, worker_user = mode.user_creds(tmp_path, "token-worker")
        client_creds, client_user = mode.user_creds(tmp_path, "orders")
        remember_secret(worker_user.seed, client_user.seed)
        worker = start_worker(only(server.url, idp, creds_file=str(worker_creds)))
        assert worker.is_ready
        with TokenClient(requester_config(server.url, creds_file=str(client_creds))) as client:
            token = client.get_token(*DEMO)
            remember_secret(token.access_token)
        assert token.access_token
        names = server.client_names()
        assert any(name.startswith("Token Worker") for name in names)
    finally:
        server.cleanup()


def test_a_worker_with_only_nats_nkey_serves_over_tls_and_signs_again_on_reconnect(
        tmp_path: Path, idp: IdpServer, start_worker: Callable[..., TokenWorker]) -> None:
    certificates = tls_certificates(tmp_path)
    worker_user, client_user = new_user(), new_user()
    remember_secret(worker_user.seed, client_user.seed)
    (tmp_path / "worker.nk").write_text(worker_user.seed + "\n")
    (tmp_path / "client.nk").write_text(client_user.seed + "\n")
    server = NatsServer(
        f'tls {{ cert_file: "{certificates / "server.pem"}", '
        f'key_file: "{certificates / "server.key"}" }}\n'
        f'authorization {{ users = [ {{ nkey: "{worker_user.public}" }}, '
        f'{{ nkey: "{client_user.public}" }} ] }}\n').start()
    try:
        url = f"tls://127.0.0.1:{server.port}"
        tls = TlsConfig(ca_file=str(certificates / "ca.pem"))
        worker = start_worker(only(url, idp, nkey_file=str(tmp_path / "worker.nk"), tls=tls))
        with TokenClient(requester_config(url, nkey_file=str(tmp_path / "client.nk"),
                                          tls=tls)) as client:
            remember_secret(client.get_token(*DEMO, skip_cache=True).access_token)
            server.restart()  # a new nonce: both sides must sign again
            wait_until(lambda: worker.is_ready and worker.reconnects >= 1, 15,
                       "the worker to reconnect with its NKey")
            remember_secret(client.get_token(*DEMO, skip_cache=True).access_token)
    finally:
        server.cleanup()


@pytest.mark.parametrize("how", ["untrusted", "revoked"])
def test_untrusted_or_revoked_credentials_exit_3_within_max_reconnect_with_the_reason(
        tmp_path: Path, how: str) -> None:
    mode = OperatorMode()
    stranger = new_user()
    remember_secret(stranger.seed)
    creds = tmp_path / f"{how}.creds"
    if how == "untrusted":  # signed by an account the operator never signed
        creds.write_text(creds_text(user_jwt(stranger, new_account()), stranger.seed))
        server = NatsServer(mode.server_config()).start()
    else:  # a user of the trusted account, revoked in the account's JWT
        creds.write_text(creds_text(user_jwt(stranger, mode.account), stranger.seed))
        server = NatsServer(mode.server_config(revoked=(stranger.public,))).start()
    try:
        process = WorkerProcess(env={"NATS_URL": server.url, "NATS_CREDS": str(creds),
                                     "MAX_RECONNECT": "3", "RECONNECT_WAIT": "0.1",
                                     "IDP_URL": "http://127.0.0.1:9"})
        try:
            assert process.finish(timeout=30) == EXIT_NATS_GAVE_UP
        finally:
            process.stop()
        text = "\n".join(process.lines)
        assert "Authorization Violation" in text
        retried = [record for record in process.records()
                   if record.get("message") == "nats connect round failed, retrying"]
        assert len(retried) == 2  # three rounds (MAX_RECONNECT), retried twice
        assert all("Authorization Violation" in record["error"] for record in retried)
        assert stranger.seed not in text and stranger.seed[:16] not in text
    finally:
        server.cleanup()


def test_a_malformed_creds_file_exits_2_naming_the_setting_and_source(tmp_path: Path) -> None:
    stranger = new_user()
    remember_secret(stranger.seed)
    creds = tmp_path / "broken.creds"
    creds.write_text(f"-----BEGIN USER NKEY SEED-----\n{stranger.seed}\n"
                     "------END USER NKEY SEED------\n")
    process = WorkerProcess(env={"NATS_CREDS": str(creds)})
    try:
        assert process.finish(timeout=30) == 2
    finally:
        process.stop()
    text = "\n".join(process.lines)
    assert "nats.credsFile" in text and "env NATS_CREDS" in text
    assert stranger.seed not in text and stranger.seed[:16] not in text


def test_token_request_signs_with_creds_and_asks_for_a_named_credential(
        tmp_path: Path, idp: IdpServer, start_worker: Callable[..., TokenWorker],
        capsys: pytest.CaptureFixture[str]) -> None:
    mode = OperatorMode()
    server = NatsServer(mode.server_config()).start()
    try:
        worker_creds, worker_user = mode.user_creds(tmp_path, "token-worker")
        orders_creds, orders_user = mode.user_creds(tmp_path, "orders")
        remember_secret(worker_user.seed, orders_user.seed)
        volume = KubeletVolume(tmp_path / "credentials")
        volume.write(credential_files("orders", *DEMO))
        config = only(server.url, idp, creds_file=str(worker_creds))
        start_worker(dataclasses.replace(
            config, credentials=CredentialsConfig(directory=str(volume.root))))
        code = request_main(["--nats-url", server.url, "--credential", "orders",
                             "--creds", str(orders_creds), "--inbox-prefix", "_INBOX.orders"])
        printed = capsys.readouterr()
        assert code == 0, printed.err
        reply = json.loads(printed.out)
        assert reply["credential"] == "orders" and reply["access_token"].endswith("…")
    finally:
        server.cleanup()


def test_operator_mode_permissions_with_a_real_worker_refuse_another_services_credential(
        tmp_path: Path, idp: IdpServer, start_worker: Callable[..., TokenWorker]) -> None:
    """The operator-mode variant of deploy/nats/authorization.conf (operator-mode.md): the
    roles as user JWT permissions, a real worker holding two credentials (one of them
    client_secret_basic), and a requester per service."""
    mode = OperatorMode()
    server = NatsServer(mode.server_config()).start()
    try:
        worker_creds, worker_user = mode.user_creds(
            tmp_path, "token-worker",
            sub={"allow": ["token.request", "token.named.*", "$SRV.>"]}, resp={"max": 1})
        orders_creds, orders_user = mode.user_creds(
            tmp_path, "orders", pub={"allow": ["token.named.orders"]},
            sub={"allow": ["_INBOX.orders.>"]})
        remember_secret(worker_user.seed, orders_user.seed)
        volume = KubeletVolume(tmp_path / "credentials")
        volume.write({**credential_files("orders", *DEMO),
                      **credential_files("billing", *BASIC,
                                         auth_method="client_secret_basic")})
        config = only(server.url, idp, creds_file=str(worker_creds))
        start_worker(dataclasses.replace(
            config, credentials=CredentialsConfig(directory=str(volume.root))))
        orders = requester_config(server.url, creds_file=str(orders_creds))
        with TokenClient(orders, inbox_prefix="_INBOX.orders", cache=False, timeout=1.0,
                         retries=0) as client:
            token = client.get_token(credential="orders")
            remember_secret(token.access_token)
            assert idp.introspect(token.access_token, *DEMO)["client_id"] == DEMO[0]
            with pytest.raises(TokenRequestFailed) as refused:
                client.get_token(credential="billing")
        # The server dropped the publish: nobody answered the one attempt (retries=0) within
        # the budget, which the README calls no_worker.
        assert refused.value.error_code == "no_worker"
    finally:
        server.cleanup()


def test_a_credential_with_its_own_auth_method_gets_its_token(
        tmp_path: Path, idp: IdpServer, start_worker: Callable[..., TokenWorker]) -> None:
    """client_secret_basic from the credential's auth_method file, end to end against the
    real IdP, while idp.authMethod stays client_secret_post (which header the IdP client
    sends is checked in tests/unit/test_named_handler.py)."""
    volume = KubeletVolume(tmp_path / "credentials")
    volume.write(credential_files("billing", *BASIC, auth_method="client_secret_basic"))
    server = NatsServer().start()
    try:
        config = make_config(server.url, idp.url)
        start_worker(dataclasses.replace(
            config, credentials=CredentialsConfig(directory=str(volume.root))))
        with TokenClient(server.url, cache=False) as client:
            token = client.get_token(credential="billing")
        remember_secret(token.access_token)
        assert idp.introspect(token.access_token, *BASIC)["client_id"] == BASIC[0]
    finally:
        server.cleanup()
