"""Named credentials and inline secrets in the handler, with no servers: a real broker, cache
and CredentialStore (over a kubelet-style volume) in front of a recording IdP."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import orjson
import pytest

from tests.fakes import FakeIssuer, HeldWork
from tests.kubelet_volume import KubeletVolume, credential_files
from token_worker import wire
from token_worker.config import IdpConfig
from token_worker.idp.client import IdpClient
from token_worker.metrics import Metrics
from token_worker.nats.protocol import Message
from token_worker.serve.credentials import CredentialStore
from token_worker.serve.handler import Reply, Waiting
from token_worker.serve.token_handler import NamedTokenHandler, TokenHandler
from token_worker.tokens.broker import TokenBroker
from token_worker.tokens.cache import TokenCache

LIMIT = 64 * 1024


class Handlers:
    """The inline and named token handlers over one broker, as the worker assembles them;
    the pool is played by :class:`~tests.fakes.HeldWork`."""

    def __init__(self, broker: TokenBroker, work: HeldWork, *,
                 store: CredentialStore | None, inline: bool = True) -> None:
        self.work = work
        self.inline = TokenHandler(broker, default_scope="openid profile", max_payload=LIMIT,
                                   inline_secrets=inline, named_prefix="token.named")
        self.named = (NamedTokenHandler(broker, store, default_scope="openid profile",
                                        max_payload=LIMIT, named_prefix="token.named")
                      if store is not None else None)

    def handle(self, payload: bytes) -> Reply | Waiting:
        return self.inline.handle_message(Message("token.request", "_INBOX.r", payload))

    def handle_named(self, subject: str, payload: bytes) -> Reply | Waiting:
        assert self.named is not None
        return self.named.handle_message(Message(subject, "_INBOX.r", payload))


def make(tmp_path: Path, *, inline: bool = True
         ) -> tuple[Handlers, FakeIssuer, Metrics, KubeletVolume, CredentialStore]:
    volume = KubeletVolume(tmp_path / "credentials")
    volume.write({**credential_files("orders", "orders-client", "orders-secret-1"),
                  **credential_files("billing", "billing-client", "billing-secret-1",
                                     scope="billing.read", auth_method="client_secret_basic")})
    store = CredentialStore(volume.root, start=False)
    idp = FakeIssuer(name_client=True)
    metrics = Metrics()
    work = HeldWork()
    cache = TokenCache(max_entries=10, expiry_margin=30, refresh_ahead=0.2, now=time.time)
    broker = TokenBroker(idp, cache, auth_method="client_secret_post", metrics=metrics,
                         work=work)
    return Handlers(broker, work, store=store, inline=inline), idp, metrics, volume, store


def served(outcome: Reply | Waiting, work: HeldWork | None = None) -> dict[str, object]:
    """The reply's body: at once for a :class:`Reply`, after the pool ran for a
    :class:`Waiting`."""
    if isinstance(outcome, Waiting):
        assert work is not None
        work.run_all()
        got: list[Reply] = []
        outcome.then(got.append)
        [reply] = got
    else:
        reply = outcome
    document: dict[str, object] = orjson.loads(reply.body)
    return document


def test_a_named_request_is_served_with_the_credential_the_subject_names(tmp_path):
    handler, idp, _, _, _ = make(tmp_path)
    first = handler.handle_named("token.named.orders", b'{"request_id": "a"}')
    assert isinstance(first, Waiting)  # a miss waits for the fetch, holding no thread
    body = served(first, handler.work)
    assert (body["request_id"], body["credential"], body["token_source"]) == ("a", "orders", "idp")
    assert idp.sent == [("orders-client", "orders-secret-1", "openid profile", None)]
    second = handler.handle_named("token.named.orders", b'{"request_id": "b"}')
    assert isinstance(second, Reply)  # a hit, on the reader thread
    assert served(second, handler.work)["token_source"] == "cache" and len(idp.sent) == 1


def test_the_credentials_scope_and_auth_method_apply_and_the_request_scope_wins(tmp_path):
    handler, idp, _, _, _ = make(tmp_path)
    served(handler.handle_named("token.named.billing", b'{"request_id": "1"}'), handler.work)
    served(handler.handle_named("token.named.billing",
                                b'{"request_id": "2", "scope": "billing.write"}'), handler.work)
    assert idp.sent == [("billing-client", "billing-secret-1", "billing.read",
                          "client_secret_basic"),
                         ("billing-client", "billing-secret-1", "billing.write",
                          "client_secret_basic")]


def test_nothing_in_the_body_chooses_another_credential(tmp_path, caplog):
    handler, idp, _, _, _ = make(tmp_path)
    caplog.set_level(logging.DEBUG)
    body = json.dumps({"request_id": "x", "client_id": "billing-client",
                       "client_secret": "attacker-secret", "credential": "billing"}).encode()
    reply = served(handler.handle_named("token.named.orders", body), handler.work)
    assert reply["credential"] == "orders"
    assert idp.sent == [("orders-client", "orders-secret-1", "openid profile", None)]
    assert "attacker-secret" not in caplog.text


@pytest.mark.parametrize("subject", ["token.named.or*ders", "token.named.a.b",
                                     "token.named", "other.named.orders", "token.named.o rders"])
def test_a_subject_that_names_no_valid_credential_is_invalid_request(tmp_path, subject):
    handler, idp, _, _, _ = make(tmp_path)
    outcome = handler.handle_named(subject, b'{"request_id": "q"}')
    assert isinstance(outcome, Reply) and outcome.error_code == wire.INVALID_REQUEST
    assert orjson.loads(outcome.body)["request_id"] == "q" and idp.sent == []


def test_unknown_and_removed_credentials_answer_unknown_credential(tmp_path):
    handler, idp, _, volume, store = make(tmp_path)
    outcome = handler.handle_named("token.named.payroll", b'{"request_id": "u"}')
    assert isinstance(outcome, Reply) and outcome.error_code == wire.UNKNOWN_CREDENTIAL
    served(handler.handle_named("token.named.orders", b'{"request_id": "1"}'), handler.work)
    volume.write(credential_files("billing", "billing-client", "billing-secret-1"))
    assert store.reload()
    gone = handler.handle_named("token.named.orders", b'{"request_id": "2"}')
    assert isinstance(gone, Reply) and gone.error_code == wire.UNKNOWN_CREDENTIAL
    assert len(idp.sent) == 1


def test_a_rotated_secret_is_used_for_the_next_idp_call(tmp_path):
    handler, idp, _, volume, store = make(tmp_path)
    served(handler.handle_named("token.named.orders", b"{}"), handler.work)
    volume.write({**credential_files("orders", "orders-client", "orders-secret-2"),
                  **credential_files("billing", "billing-client", "billing-secret-1")})
    assert store.reload()
    reply = served(handler.handle_named("token.named.orders", b"{}"), handler.work)
    assert reply["token_source"] == "idp"  # a new secret is a new cache key
    assert idp.sent[-1][:2] == ("orders-client", "orders-secret-2")


def test_a_named_handler_needs_the_subject(tmp_path):
    _, idp, _, _, store = make(tmp_path)
    broker = TokenBroker(idp, None, auth_method="client_secret_post", work=HeldWork())
    named = NamedTokenHandler(broker, store, default_scope="", max_payload=LIMIT)
    outcome = named.handle(b'{"request_id": "bare"}')  # no subject: no credential named
    assert isinstance(outcome, Reply) and outcome.error_code == wire.INVALID_REQUEST
    assert orjson.loads(outcome.body)["request_id"] == "bare"
    assert idp.sent == []


def test_inline_secrets_off_refuses_them_with_no_idp_call_cache_or_log(tmp_path, caplog):
    handler, idp, metrics, _, _ = make(tmp_path, inline=False)
    caplog.set_level(logging.DEBUG)
    body = json.dumps({"request_id": "i", "client_id": "svc",
                       "client_secret": "inline-secret-xyz"}).encode()
    for _ in range(2):
        outcome = handler.handle(body)
        assert isinstance(outcome, Reply)
        assert outcome.error_code == wire.INLINE_SECRETS_DISABLED
        assert orjson.loads(outcome.body)["request_id"] == "i"
    assert idp.sent == []
    sample = metrics.registry.get_sample_value
    assert (sample("token_worker_cache_events_total", {"event": "miss"}) or 0) == 0
    assert "inline-secret-xyz" not in caplog.text
    named = served(handler.handle_named("token.named.orders", b"{}"), handler.work)
    assert named["credential"] == "orders"  # named requests still served


def test_named_and_inline_requests_share_cache_single_flight_and_metrics(tmp_path):
    handler, idp, metrics, _, _ = make(tmp_path)
    inline = json.dumps({"request_id": "i", "client_id": "orders-client",
                         "client_secret": "orders-secret-1"}).encode()
    first = handler.handle_named("token.named.orders", b"{}")
    follower = handler.handle(inline)  # same query, before the first is answered
    assert isinstance(first, Waiting) and isinstance(follower, Waiting)
    assert handler.work.submitted == 1  # one fetch for both
    served(first, handler.work)
    assert served(follower, handler.work)["access_token"] == "token-for-orders-client-1"
    assert len(idp.sent) == 1
    sample = metrics.registry.get_sample_value
    assert sample("token_worker_cache_events_total", {"event": "miss"}) == 2.0


def test_the_idp_client_uses_the_auth_method_it_is_given_over_the_configured_one():
    seen: list[tuple[str, dict[str, list[str]]]] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            seen.append((self.headers.get("Authorization", ""), form))
            body = b'{"access_token": "t", "token_type": "Bearer", "expires_in": 60}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = IdpClient(IdpConfig(url=f"http://127.0.0.1:{server.server_port}",
                                     token_path="/token", auth_method="client_secret_post"))
        client.fetch_token("billing-client", "billing-secret", "",
                           auth_method="client_secret_basic")
        client.fetch_token("orders-client", "orders-secret", "")
        client.close()
    finally:
        server.shutdown()
        server.server_close()
    basic = "Basic " + base64.b64encode(b"billing-client:billing-secret").decode()
    assert seen[0][0] == basic and "client_secret" not in seen[0][1]
    assert seen[1][0] == "" and seen[1][1]["client_secret"] == ["orders-secret"]


def test_a_credential_that_needs_a_grant_sends_it_made_once_per_scope(tmp_path):
    from tests.pki import key_pem, rsa_key

    volume = KubeletVolume(tmp_path / "grants")
    volume.write({"jwt/client_id": "jwt-client", "jwt/auth_method": "private_key_jwt",
                  "jwt/private_key": key_pem(rsa_key()).decode(), "jwt/resource": "urn:x"})
    store = CredentialStore(volume.root, start=False)
    idp, work = FakeIssuer(), HeldWork(at_once=True)
    broker = TokenBroker(idp, None, auth_method="client_secret_post", work=work)
    named = NamedTokenHandler(broker, store, default_scope="read", max_payload=LIMIT)
    for _ in range(3):
        served(named.handle_message(Message("token.named.jwt", "r", b"{}")), work)
    served(named.handle_message(Message("token.named.jwt", "r", b'{"scope": "write"}')), work)
    assert [(g.auth.method, g.resources, g.scope) for g in idp.grants if g] == [
        ("private_key_jwt", ("urn:x",), "read")] * 3 + [
        ("private_key_jwt", ("urn:x",), "write")]
    assert idp.grants[0] is idp.grants[1]  # the same grant object: made once per scope
    assert all(sent[1] == "" for sent in idp.sent)  # no secret for a key credential
