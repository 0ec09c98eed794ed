"""The requester's decisions without any server: which replies are believed, which tokens
are well formed, how inboxes are named and routed, how connect failures are described."""

from __future__ import annotations

import json
import re

import pytest

from token_worker.client.client import TokenClient
from token_worker.client.exchange import (
    MAX_TTL,
    call_budget,
    check_request,
    issued_from_reply,
    match_reply,
    named,
    named_request_body,
    request_body,
    request_cache_key,
)
from token_worker.client.inbox import Inbox, Waiter
from token_worker.client.retries import (
    BACKOFF_MAX,
    ConnectionLost,
    NoResponders,
    RetryPolicy,
    Unanswered,
)
from token_worker.errors import ClientClosed, TokenRequestFailed
from token_worker.nats.handshake import describe_connect_error, pynats2
from token_worker.nats.link import State
from token_worker.nats.protocol import Message
from token_worker.nats.replies import ReplyMux
from token_worker.wire import NamedTokenRequest, TokenRequest


def _reply(**fields: object) -> bytes:
    return json.dumps(fields).encode()


TOKEN = {"access_token": "at", "token_type": "Bearer", "expires_in": 300}


# --- which replies are believed ------------------------------------------------------------

def test_only_a_reply_echoing_the_request_id_ismatch_reply():
    assert match_reply(_reply(request_id="r-1", **TOKEN), "r-1", None) == {"request_id": "r-1",
                                                                         **TOKEN}
    for forged in (_reply(request_id="r-2", **TOKEN), _reply(**TOKEN), b"not json",
                   b'[{"request_id": "r-1"}]', b"", _reply(request_id=None, **TOKEN)):
        assert match_reply(forged, "r-1", None) is None


def test_a_named_reply_must_name_the_credential_asked_for():
    assert match_reply(_reply(request_id="r", credential="orders", **TOKEN), "r", "orders")
    assert match_reply(_reply(request_id="r", credential="billing", **TOKEN), "r", "orders") is None
    assert match_reply(_reply(request_id="r", **TOKEN), "r", "orders") is None  # a token: must name
    error = _reply(request_id="r", error="no such credential", error_code="unknown_credential")
    assert match_reply(error, "r", "orders")  # an error reply need not name it


# --- which tokens are well formed ----------------------------------------------------------

def test_expires_in_is_capped_by_max_ttl_and_may_be_a_float():
    assert issued_from_reply({**TOKEN, "expires_in": 10**12}, "r", 0.0, MAX_TTL).expires_in \
        == 86400
    assert issued_from_reply({**TOKEN, "expires_in": 300.0}, "r", 0.0, MAX_TTL).expires_in \
        == 300
    assert issued_from_reply({**TOKEN, "expires_in": 299.7}, "r", 0.0, 60).expires_in == 60


@pytest.mark.parametrize("bent", [
    {"expires_in": -5}, {"expires_in": True}, {"expires_in": "300"}, {"expires_in": None},
    {"access_token": ""}, {"access_token": 5}, {"access_token": None}, {"token_type": 7},
    {"token_type": None}, {"scope": ["read"]}, {"credential": 5},
    {"access_token": "ATTACKER-TOKEN\r\nX-Injected: 1"}, {"access_token": "ATTACKER TOKEN"},
    {"access_token": "ATTACKER\x00"}, {"access_token": "ATTACKERü"},
    {"access_token": "ATTACKER\u2028"},
    {"token_type": "DPoP"}, {"token_type": "mac"}, {"token_type": "Bearer\r\nX: 1"},
])
def test_a_malformed_token_is_a_bad_reply_naming_the_field(bent):
    with pytest.raises(TokenRequestFailed) as caught:
        issued_from_reply({**TOKEN, **bent}, "r", 0.0, MAX_TTL)
    assert caught.value.error_code == "bad_reply"
    [field] = bent
    assert f"reply field {field} must be" in str(caught.value)  # the wire types' reason
    assert "ATTACKER" not in str(caught.value)


@pytest.mark.parametrize("access_token", [
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",  # a JWT
    "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4Q0JDLUhTMjU2In0..iv.ct.tag",  # Keycloak's opaque (JWE)
    "ya29.a0Af-_~+/x==", "x", "opaque!token%with:other$visible#chars",
])
def test_visible_ascii_tokens_are_tokens_and_bearer_is_read_in_any_case(access_token):
    issued = issued_from_reply({**TOKEN, "access_token": access_token, "token_type": "bearer"},
                                "r", 0.0, MAX_TTL)
    assert (issued.access_token, issued.token_type) == (access_token, "Bearer")


def test_an_error_reply_keeps_its_code():
    with pytest.raises(TokenRequestFailed) as caught:
        issued_from_reply({"error": "refused", "error_code": "invalid_client"}, "r-9", 0.0, 1)
    assert (caught.value.error_code, caught.value.request_id) == ("invalid_client", "r-9")


# --- request bodies and cache keys ---------------------------------------------------------

def test_request_bodies_are_the_wire_types():
    body = request_body("id", "secret", "read", skip_cache=True)
    parsed = TokenRequest.from_bytes(json.dumps(body).encode(), max_size=4096)
    assert parsed == TokenRequest(body["request_id"], "id", "secret", "read",
                                  body["timestamp"], skip_cache=True)
    named = named_request_body("read")
    assert NamedTokenRequest.from_bytes(json.dumps(named).encode(), max_size=4096) == (
        NamedTokenRequest(named["request_id"], "read", timestamp=named["timestamp"]))


def test_a_named_request_carries_no_client_id_or_secret():
    assert set(named_request_body()) == {"request_id", "timestamp"}
    assert named_request_body("read", skip_cache=True)["scope"] == "read"
    inline = request_body("id", "secret", "")
    assert inline["scope"] == "" and inline["client_secret"] == "secret"
    assert named_request_body()["request_id"] != named_request_body()["request_id"]


@pytest.mark.parametrize(("body", "named", "reason"), [
    ({"request_id": "R" * 4097, "client_id": "id", "client_secret": "s"}, False,
     "request_id is longer than 4096"),
    ({"request_id": "r\n1", "client_id": "id", "client_secret": "s"}, False, "control"),
    ({"request_id": 5, "client_id": "id", "client_secret": "s"}, False, "must be a string"),
    ({"request_id": "r", "client_id": "id"}, False, "missing field client_secret"),
    ({"request_id": "r", "client_id": "i\r\nd", "client_secret": "s"}, False, "control"),
    ({"request_id": "r", "client_id": "id", "client_secret": "s", "scope": 5}, False, "scope"),
    ({"request_id": "r", "skip_cache": "yes"}, True, "skip_cache"),
    ({"request_id": "r", "timestamp": 5}, True, "timestamp"),
])
def test_a_body_the_worker_would_refuse_is_refused_before_sending(body, named, reason):
    with pytest.raises(TokenRequestFailed, match=reason) as caught:
        check_request(json.dumps(body).encode(), named=named)
    assert caught.value.error_code == "invalid_request"
    assert "request not sent" in str(caught.value)


def test_the_bodies_the_client_builds_pass_its_own_check():
    check_request(json.dumps(request_body("id", "s3cret\n", "a b")).encode(), named=False)
    check_request(json.dumps(named_request_body("read", skip_cache=True)).encode(), named=True)
    check_request(b"", named=True)  # an empty named body: every field at its default


def test_no_scope_and_empty_scope_have_different_cache_keys():
    def key(scope: str | None) -> object:
        return request_cache_key("token.request", "id", "secret", scope)

    assert key(None) != key("")
    assert key("b a") == key("a b")
    assert request_cache_key("token.named.orders", "", "", None) != request_cache_key(
        "token.named.billing", "", "", None)


@pytest.mark.parametrize("name", ["", "a.b", "a*", "a>", "a b", "ü", "x" * 256])
def test_a_bad_credential_name_is_refused_locally(name):
    with pytest.raises(ValueError, match="credential"):
        named("token.named", name)


@pytest.mark.parametrize(("field", "value"), [
    ("inbox_prefix", ""), ("inbox_prefix", "_INBOX.*"), ("inbox_prefix", "_INBOX.>"),
    ("inbox_prefix", "a b"), ("inbox_prefix", "a..b"), ("inbox_prefix", "a\tb"),
    ("named_subject", "token.*"),
])
def test_a_bad_subject_prefix_is_refused_before_connecting(field, value):
    with pytest.raises(ValueError, match=field):
        TokenClient("nats://127.0.0.1:9", **{field: value})


@pytest.mark.parametrize(("option", "value"), [
    ("timeout", float("nan")), ("timeout", float("inf")), ("timeout", 0), ("timeout", -1),
    ("timeout", "10"), ("timeout", 1e10), ("max_ttl", float("nan")), ("max_ttl", 0),
    ("max_reply_size", 0), ("max_reply_size", 1.5), ("retries", -1), ("retries", 1.0),
    ("retries", True),
])
def test_an_option_that_would_make_calls_never_end_or_end_at_once_is_refused(option, value):
    """NaN compares false with everything: a timeout of NaN was a call that never ended."""
    with pytest.raises(ValueError, match=option):
        TokenClient("nats://127.0.0.1:9", **{option: value})


@pytest.mark.parametrize("budget", [float("nan"), float("inf"), 0, -5, "5", 86_401])
def test_a_budget_that_is_no_finite_time_above_0_is_refused(budget):
    with pytest.raises(ValueError, match="budget must be"):
        call_budget(budget, timeout=10, retries=2)


def test_without_a_budget_a_call_has_time_for_every_attempt_and_a_second_more():
    assert call_budget(None, timeout=10, retries=2) == 31.0
    assert call_budget(2.5, timeout=10, retries=2) == 2.5


def test_a_bad_nats_url_is_refused_before_connecting():
    with pytest.raises(ValueError, match="NATS URL must be nats://host:port"):
        TokenClient("http://127.0.0.1:4222")


# --- inboxes ---------------------------------------------------------------------------------

class Wires:
    """The connection under a reply space: remembers the wildcard subscription's callback."""

    def __init__(self) -> None:
        self.subscribed: list[str] = []
        self.deliver = None

    def subscribe(self, subject, callback, queue=""):
        self.subscribed.append(subject)
        self.deliver = callback

    def publish(self, subject, payload, reply="", *, headers=None):
        pass

    def on_reader_thread(self):
        return False


def inbox_on(prefix: str, max_reply_size: int) -> tuple[Inbox, Wires]:
    wires = Wires()
    return Inbox(ReplyMux(wires, prefix), max_reply_size), wires


def test_inbox_subjects_are_random_under_the_prefix():
    inbox, wires = inbox_on("svc.orders", 1024)
    waiter = Waiter()
    subjects = {inbox.new_subject(waiter) for _ in range(1000)}
    assert len(subjects) == 1000
    pattern = re.compile(r"svc\.orders\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{22}")
    assert all(pattern.fullmatch(subject) for subject in subjects)
    assert {s.rsplit(".", 1)[0] for s in subjects} == {inbox.prefix}
    assert wires.subscribed == [inbox.prefix + ".*"]  # one wildcard subscription
    assert inbox_on("svc.orders", 1024)[0].prefix != inbox.prefix


def test_the_inbox_drops_what_nobody_awaits_and_what_is_too_large():
    inbox, wires = inbox_on("_INBOX", 10)
    waiter = Waiter()
    subject = inbox.new_subject(waiter)
    wires.deliver(Message(subject, "", b"0123456789"))
    wires.deliver(Message(subject, "", b"0123456789+"))
    wires.deliver(Message(inbox.prefix + ".guessed", "", b"{}"))
    assert [m.payload for m in waiter.messages] == [b"0123456789"]
    assert inbox.dropped == 2
    inbox.forget([subject])
    wires.deliver(Message(subject, "", b"late"))
    assert inbox.dropped == 3
    inbox.count_dropped()  # delivered, but not the answer
    assert inbox.dropped == 4


def test_a_lost_connection_and_a_close_wake_the_waiters():
    inbox, _ = inbox_on("_INBOX", 10)
    waiter = Waiter()
    inbox.new_subject(waiter)
    inbox.on_state(State.CONNECTED)
    assert not waiter.lost
    inbox.on_state(State.RECONNECTING)
    assert waiter.lost == "NATS connection lost (reconnecting)"
    inbox.close()
    assert waiter.closed
    with pytest.raises(ClientClosed):
        inbox.new_subject(Waiter())


# --- connect failures say why ----------------------------------------------------------------

def test_connect_errors_are_described():
    assert "no NATS greeting" in describe_connect_error(
        pynats2.NATSConnectionError("connection failed"))
    assert describe_connect_error(pynats2.NATSUnexpectedResponse(b"HTTP/1.1 400")) == (
        "unexpected answer b'HTTP/1.1 400': not a NATS server")
    assert describe_connect_error(ConnectionRefusedError(111, "Connection refused")) == (
        "ConnectionRefusedError [errno 111]: Connection refused")
    assert describe_connect_error(pynats2.NATSInvalidSchemeError("got unsupported URI "
                                                                  "scheme: http")) == (
        "NATSInvalidSchemeError: got unsupported URI scheme: http")
    assert describe_connect_error(TimeoutError("timed out")) == "TimeoutError: timed out"


# --- retries that follow what happened -------------------------------------------------------

def test_nothing_is_retried_with_retries_zero():
    policy = RetryPolicy(0, 10.0)
    for outcome in (NoResponders(""), ConnectionLost(""), Unanswered("", dropped=1)):
        assert policy.pause_after(outcome) is None


def test_unanswered_attempts_count_and_a_forged_one_is_retried_at_once():
    policy = RetryPolicy(2, 10.0)
    assert policy.pause_after(Unanswered("", dropped=3)) == 0.0
    assert 0 <= policy.pause_after(Unanswered("", dropped=0)) <= 0.05
    assert policy.pause_after(Unanswered("", dropped=1)) is None  # the third: retries spent


def test_no_worker_and_lost_connections_back_off_and_do_not_use_up_retries():
    policy = RetryPolicy(1, 3600.0)
    pauses = [policy.pause_after(ConnectionLost("")) for _ in range(10)]
    pauses += [policy.pause_after(NoResponders("")) for _ in range(10)]
    assert all(p is not None and 0 < p <= BACKOFF_MAX for p in pauses)
    assert pauses[0] <= 0.05 and pauses[-1] >= BACKOFF_MAX / 2
    assert policy.pause_after(Unanswered("", dropped=0)) is not None


def test_no_worker_is_waited_for_at_most_one_timeout():
    assert RetryPolicy(5, 0.0).pause_after(NoResponders("")) is None
    assert RetryPolicy(5, 0.0).pause_after(ConnectionLost("")) is not None
