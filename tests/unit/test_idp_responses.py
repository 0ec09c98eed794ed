"""What the IdP client and its retry policy make of every kind of answer, against a scripted
HTTP IdP on 127.0.0.1 (no NATS, no Node): what is retried, what fails at once, what is
logged, and the bounds on time and size."""

from __future__ import annotations

import base64
import email.utils
import gzip
import html
import json
import logging
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from tests.conftest import report_figure
from tests.fakes import Clock
from tests.faulty_idp import Scripted
from tests.helpers import resident_bytes
from token_worker.config import IdpConfig
from token_worker.errors import (
    AskedToWait,
    IdpBadResponse,
    IdpError,
    IdpRefused,
    IdpTimeout,
    IdpUnavailable,
)
from token_worker.idp.client import IdpClient
from token_worker.idp.resilience import LONGEST_HOLD, ResilientIdp

TOKEN = b'{"access_token": "tok-abc", "token_type": "Bearer", "expires_in": 60}'
SECRET_TOKEN = "secret-token-never-logged-0123456789"


def resilient(url: str, *, clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep, **settings: Any) -> ResilientIdp:
    config = IdpConfig(url=url, token_path="/token",
                       **{"timeout": 2.0, "deadline": 4.0, "failure_threshold": 1, **settings})
    return ResilientIdp(IdpClient(config), config, clock=clock, sleep=sleep)


def no_pause(_seconds: float) -> None:
    """The retry policy's pauses, skipped: a 5xx is retried at once, up to the attempts a
    fetch may make, however busy the machine (no deadline has to be short for speed)."""


def failure_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "idp call failed"]


# --- unusable answers: one call, no retry, circuit untouched ----------------------------

@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (Scripted(body=b"<html>surprise</html>"), "not JSON"),
        (Scripted(body=b""), "empty body"),
        (Scripted(body=b'["' + SECRET_TOKEN.encode() + b'"]'), "a JSON array, not an object"),
        (Scripted(body=b'{"token_type": "Bearer"}'), "no access_token"),
        (Scripted(body=b'{"access_token": ""}'), "access_token empty"),
        (Scripted(body=b'{"access_token": 12345}'), "access_token not a string"),
        (Scripted(body=b'{"access_token": "t", "expires_in": null}'), "expires_in not a number"),
        (Scripted(body=b'{"access_token": "t", "expires_in": true}'), "expires_in not a number"),
        (Scripted(body=b'{"access_token": "t", "expires_in": "soon"}'),
         "expires_in not a number"),
        (Scripted(body=b'{"access_token": "t", "expires_in": -5}'), "expires_in negative"),
        (Scripted(body=b'{"access_token": "t", "scope": 5}'), "scope not a string"),
        (Scripted(body=b'{"access_token": "%s", "token_type": "DPoP"}' % SECRET_TOKEN.encode()),
         "token type DPoP cannot be used without a proof"),
        (Scripted(body=b'{"access_token": "t", "token_type": "mac"}'),
         "token type mac cannot be used without a proof"),
        (Scripted(302, headers={"Location": "https://evil.example/steal?x=1"}),
         "redirect to evil.example"),
        (Scripted(307, headers={"Location": "/elsewhere"}), "redirect to 127.0.0.1:"),
        (Scripted(301), "redirect without a Location"),
        (Scripted(302, headers={"Location": "http://[::1/x"}),
         "redirect to an unparsable location"),
        (Scripted(body='{"access_token": "ab\u2028cd"}'.encode()),
         "access_token has characters other than visible ASCII"),
        (Scripted(body=b'{"access_token": "ab\\u0085cd"}'),
         "access_token has characters other than visible ASCII"),
        (Scripted(body=b'{"access_token": "ab\\u202ecd"}'),
         "access_token has characters other than visible ASCII"),
        (Scripted(body=b'{"access_token": "ab cd"}'),
         "access_token has characters other than visible ASCII"),
        (Scripted(body=b'{"access_token": "ab\\u00e9cd"}'),
         "access_token has characters other than visible ASCII"),
        (Scripted(404, b"<html>Not Found</html>"), "HTTP 404 without an OAuth2 error body"),
    ],
)
def test_an_unusable_answer_costs_one_call_and_names_its_cause(answer, reason, faulty, caplog):
    server = faulty(script=[answer, Scripted(body=TOKEN)])
    idp = resilient(server.url)
    with pytest.raises(IdpBadResponse) as caught:
        idp.fetch_token("c", "s", "")
    error = caught.value
    assert error.error_code == "idp_bad_response"
    assert reason in str(error)
    assert str(error).startswith("unusable answer from the identity provider (HTTP ")
    assert server.calls == 1  # no retry
    assert not idp.circuit_open  # threshold 1, yet not opened: the IdP is up
    assert idp.fetch_token("c", "s", "").access_token == "tok-abc"  # next caller served
    [line] = failure_lines(caplog)
    assert (line.status, line.attempt, line.retrying) == (answer.status, 1, False)
    assert reason in line.reason
    assert line.elapsed_ms >= 0
    if answer.status == 200:
        assert not hasattr(line, "body")  # a 2xx body may hold a token
    for record in caplog.records:
        assert SECRET_TOKEN not in record.getMessage()
        assert SECRET_TOKEN not in str(record.__dict__)
    assert SECRET_TOKEN not in str(error)


def test_a_jwt_and_an_opaque_token_with_every_visible_character_are_accepted(faulty):
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjIn0.c2ln-_"
    opaque = "".join(chr(code) for code in range(0x21, 0x7f) if chr(code) not in '"\\')
    server = faulty(script=[(200, json.dumps({"access_token": token}).encode(), {})
                            for token in (jwt, opaque)])
    idp = resilient(server.url)
    assert [idp.fetch_token("c", "s", "").access_token for _ in range(2)] == [jwt, opaque]


def test_a_redirect_is_never_followed(faulty):
    target = faulty(body=TOKEN)
    server = faulty(status=302, headers={"Location": target.url + "/token"})
    with pytest.raises(IdpBadResponse, match=r"redirect to 127\.0\.0\.1:\d+"):
        resilient(server.url).fetch_token("c", "secret", "")
    assert target.calls == 0  # the secret never went there


# --- liberal reading (RFC 6749 5.1) -----------------------------------------------------

@pytest.mark.parametrize(
    ("body", "expires_in"),
    [
        (b'{"access_token": "t", "expires_in": 300.0}', 300),
        (b'{"access_token": "t", "expires_in": 299.7}', 299),
        (b'{"access_token": "t", "expires_in": "300"}', 300),
        (b'{"access_token": "t", "expires_in": "299.5"}', 299),
        (b'{"access_token": "t", "expires_in": 0}', 0),
        (b'{"access_token": "t", "expires_in": 1e300}', 2**31 - 1),
        (b'{"access_token": "t"}', 1234),  # idp.defaultExpiresIn
    ],
)
def test_expires_in_of_any_number_type(body, expires_in, faulty):
    server = faulty(body=body)
    token = resilient(server.url, default_expires_in=1234).fetch_token("c", "s", "")
    assert token.expires_in == expires_in


def test_token_type_and_scope_are_read_liberally(faulty):
    server = faulty(script=[
        (200, b'{"access_token": "t", "token_type": "bearer"}', {}),
        (200, b'{"access_token": "t", "token_type": "BEARER", "scope": "read"}', {}),
    ])
    idp = resilient(server.url)
    first = idp.fetch_token("c", "s", "read write")
    assert (first.token_type, first.scope) == ("Bearer", "read write")  # omitted: as asked
    second = idp.fetch_token("c", "s", "read write")
    assert (second.token_type, second.scope) == ("Bearer", "read")  # narrowed by the IdP


def test_a_form_encoded_token_response_is_read_by_its_content_type(faulty):
    server = faulty(body=b"access_token=form-token&token_type=bearer&expires_in=120&scope=a+b",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    token = resilient(server.url).fetch_token("c", "s", "")
    assert (token.access_token, token.token_type, token.expires_in, token.scope) == (
        "form-token", "Bearer", 120, "a b")


# --- refusals ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (401, b"", "invalid_client"),  # RFC 6749 5.2: failed client authentication
        (400, b"", "invalid_request"),
        (403, b"<html>Forbidden</html>", "unauthorized_client"),
        (400, b'{"error": "invalid_scope", "error_description": "no such scope"}',
         "invalid_scope"),
    ],
)
def test_refusals_keep_their_code_and_are_not_retried(status, body, code, faulty, caplog):
    server = faulty(status=status, body=body)
    idp = resilient(server.url)
    with pytest.raises(IdpRefused) as caught:
        idp.fetch_token("c", "s", "")
    assert caught.value.error_code == code
    assert server.calls == 1
    assert not idp.circuit_open
    [line] = failure_lines(caplog)
    assert (line.status, line.levelname) == (status, "INFO")


# --- transient failures -----------------------------------------------------------------

def test_a_5xx_is_retried_and_logged_once_per_attempt_with_an_excerpt(faulty, caplog):
    server = faulty(script=[(503, b"x" * 5000, {}), (502, b"bad gateway", {}),
                            (200, TOKEN, {})])
    idp = resilient(server.url, failure_threshold=10)
    assert idp.fetch_token("c", "s", "").access_token == "tok-abc"
    lines = failure_lines(caplog)
    assert [(r.status, r.attempt, r.retrying) for r in lines] == [(503, 1, True),
                                                                   (502, 2, True)]
    assert len(lines[0].body) <= 200
    assert lines[1].body == "bad gateway"
    assert all(r.error_code == "idp_unavailable" and r.reason.startswith("HTTP 5")
               for r in lines)


def test_a_500_stays_idp_unavailable_when_the_deadline_ends_the_retries(faulty):
    server = faulty(script=[Scripted(500, b"oops"), Scripted(body=TOKEN, delay=30)])
    # No pauses: the retries that hang use up all the time left, however busy the machine
    # (with pauses, a slow machine could end them by the attempts' limit instead).
    with pytest.raises(IdpUnavailable) as caught:
        resilient(server.url, timeout=0.3, deadline=0.5, failure_threshold=10,
                  sleep=no_pause).fetch_token("c", "s", "")

    assert caught.value.error_code == "idp_unavailable"
    assert "HTTP 500" in str(caught.value)
    assert "the deadline ended the retries" in str(caught.value)


def test_an_unreachable_idp_names_the_network_error(caplog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(IdpUnavailable, match="ConnectionRefusedError"):
        resilient(f"http://127.0.0.1:{port}", deadline=0.3,
                  failure_threshold=10).fetch_token("c", "s", "")
    line = failure_lines(caplog)[0]
    assert line.network_error == "ConnectionRefusedError: Connection refused"
    assert not hasattr(line, "status")


# --- Retry-After ------------------------------------------------------------------------

@pytest.mark.parametrize("when", ["120", "http-date"])
def test_a_retry_after_beyond_the_deadline_makes_the_worker_fail_fast(when, faulty):
    value = when if when != "http-date" else email.utils.formatdate(time.time() + 120,
                                                                    usegmt=True)
    server = faulty(status=429, headers={"Retry-After": value})
    idp = resilient(server.url, deadline=1.0, failure_threshold=10)
    with pytest.raises(AskedToWait) as first:
        idp.fetch_token("c", "s", "")
    assert first.value.error_code == "idp_unavailable"
    assert str(first.value) in ("identity provider asked to wait 120 s",
                                "identity provider asked to wait 119 s")
    started = time.monotonic()
    with pytest.raises(AskedToWait, match=r"not asking it again for 1[12][0-9] s"):
        idp.fetch_token("c", "s", "")
    assert time.monotonic() - started < 0.05
    assert server.calls == 1


def test_a_429_holds_only_the_client_it_was_about(faulty):
    """Finding 4: one client's 429 (Retry-After 120) must not fail every other client."""
    server = faulty(script=[(429, b"", {"Retry-After": "120"}), (200, TOKEN, {}),
                            (200, TOKEN, {})])
    idp = resilient(server.url, deadline=1.0, failure_threshold=1)
    with pytest.raises(AskedToWait, match=r"asked to wait 1[12][0-9] s"):
        idp.fetch_token("noisy", "s", "")
    assert idp.refusal("noisy") is not None and idp.refusal("quiet") is None
    assert not idp.failing_fast and not idp.circuit_open
    with pytest.raises(AskedToWait, match="for this client; not asking it again"):
        idp.fetch_token("noisy", "s", "")
    assert server.calls == 1
    assert idp.fetch_token("quiet", "s", "").access_token == "tok-abc"  # others go on
    assert idp.fetch_token("other", "s", "").access_token == "tok-abc"
    assert server.calls == 3


def test_a_503s_retry_after_is_for_the_client_that_got_it_not_the_endpoint(faulty):
    """One client's 503 with a long Retry-After ends its fetch saying so (the broker holds
    that key back for as long); the endpoint is asked for everyone else."""
    server = faulty(script=[(503, b"", {"Retry-After": "120"}), (200, TOKEN, {})])
    idp = resilient(server.url, deadline=1.0, failure_threshold=10)
    with pytest.raises(AskedToWait) as asked:
        idp.fetch_token("one", "s", "")
    assert asked.value.retry_after == 120
    assert not idp.failing_fast and idp.refusal("one") is None
    assert idp.fetch_token("another", "s", "").access_token == "tok-abc"
    assert server.calls == 2


def test_a_huge_retry_after_is_shown_sanely_and_held_at_most_the_longest_hold(faulty):
    server = faulty(status=429, headers={"Retry-After": "9" * 40})
    idp = resilient(server.url, deadline=1.0, failure_threshold=10)
    with pytest.raises(AskedToWait) as caught:
        idp.fetch_token("c", "s", "")
    assert str(caught.value) == "identity provider asked to wait more than a day"
    assert caught.value.retry_after == LONGEST_HOLD
    with pytest.raises(AskedToWait, match=r"more than a day for this client; not asking it "
                                          r"again for (300|299) s"):
        idp.fetch_token("c", "s", "")


def test_the_idp_is_asked_again_once_its_retry_after_has_passed(faulty):
    server = faulty(script=[(429, b"", {"Retry-After": "1"}), (200, TOKEN, {})])
    clock = Clock()
    idp = resilient(server.url, clock=clock.monotonic, deadline=0.5, failure_threshold=10)
    with pytest.raises(AskedToWait):
        idp.fetch_token("c", "s", "")
    clock.advance(0.9)
    with pytest.raises(AskedToWait, match="for this client"):
        idp.fetch_token("c", "s", "")
    clock.advance(0.1)
    assert idp.fetch_token("c", "s", "").access_token == "tok-abc"
    assert server.calls == 2


# --- bounded in time and size -----------------------------------------------------------

@pytest.mark.parametrize("headers_too", [False, True])
def test_a_trickled_answer_is_cut_at_the_deadline(headers_too, faulty, caplog):
    server = faulty(script=[Scripted(body=TOKEN + b" " * 200, trickle=0.05,
                                     trickle_headers=headers_too)])
    idp = resilient(server.url, timeout=0.25, deadline=0.6, failure_threshold=10)
    started = time.monotonic()
    with pytest.raises(IdpTimeout):
        idp.fetch_token("c", "s", "")
    elapsed = time.monotonic() - started
    report_figure(f"trickled {'headers' if headers_too else 'body'} (1 byte / 50 ms), "
                  f"timeout 0.25 s, deadline 0.6 s: cut after {elapsed:.2f} s")
    assert 0.5 < elapsed < 0.9
    assert all(r.elapsed_ms < 900 for r in failure_lines(caplog))


@pytest.mark.parametrize("content_length", [True, False])
def test_a_100_mb_answer_is_refused_without_reading_it(content_length, faulty):
    huge = Scripted(size=100 * 1024 * 1024, content_length=content_length)
    server = faulty(script=[huge, huge, huge, huge, Scripted(body=TOKEN)])
    idp = resilient(server.url, timeout=10, deadline=20)
    before = resident_bytes()
    started = time.monotonic()
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            idp.fetch_token("c", "s", "")
        except IdpError as error:
            errors.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    grown = (resident_bytes() - before) / 1024 / 1024
    elapsed = time.monotonic() - started
    report_figure(f"4 concurrent 100 MB answers ({'with' if content_length else 'without'} "
                  f"Content-Length): RSS +{grown:.1f} MB, {elapsed:.2f} s")
    assert [str(e) for e in errors] == [
        "unusable answer from the identity provider (HTTP 200): larger than 1048576 bytes"] * 4
    assert grown < 8
    assert server.calls == 4
    assert idp.fetch_token("c", "s", "").access_token == "tok-abc"  # the pool recovered


def test_the_callers_deadline_shortens_the_fetch(faulty):
    server = faulty(body=TOKEN, delay=30)
    idp = resilient(server.url, timeout=5, deadline=8, failure_threshold=10)
    started = time.monotonic()
    with pytest.raises(IdpTimeout):
        idp.fetch_token("c", "s", "", deadline=time.monotonic() + 0.4)
    assert time.monotonic() - started < 0.7


def test_a_caller_whose_deadline_has_passed_never_calls(faulty):
    server = faulty(body=TOKEN)
    with pytest.raises(IdpTimeout, match="no time left"):
        resilient(server.url).fetch_token("c", "s", "", deadline=time.monotonic() - 1)
    assert server.calls == 0


def gzip_of_spaces(size: int) -> bytes:
    """A gzip stream of ``size`` spaces (a decompression bomb), made without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b" " * (1024 * 1024)
    parts = [packer.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join([*parts, packer.flush()])


def test_a_gzip_answer_is_read_and_a_gzip_bomb_is_cut_at_the_limit(faulty):
    gzip_header = {"Content-Encoding": "gzip"}
    bomb = gzip_of_spaces(200 * 1024 * 1024)
    server = faulty(script=[(200, gzip.compress(TOKEN), gzip_header),
                            (200, bomb, gzip_header)])
    idp = resilient(server.url)
    assert idp.fetch_token("c", "s", "").access_token == "tok-abc"
    before = resident_bytes()
    with pytest.raises(IdpBadResponse, match="larger than 1048576 bytes"):
        idp.fetch_token("c", "s", "")
    grown = (resident_bytes() - before) / 1024 / 1024
    report_figure(f"gzip bomb ({len(bomb) // 1024} KiB -> 200 MiB): RSS +{grown:.1f} MB")
    assert grown < 8


# --- the secret echoed back -------------------------------------------------------------

ECHO_ID = "echo client"
ECHO_SECRET = 'S3cret/+ =&\u00e9"<SENTINEL>-0123456789'


def echoed_forms() -> dict[str, str]:
    """Every form the request carried the secret in, as an IdP or proxy might echo it."""
    basic = base64.b64encode(
        f"{quote(ECHO_ID, safe='')}:{quote(ECHO_SECRET, safe='')}".encode()).decode()
    return {"raw": ECHO_SECRET, "quote_plus": quote_plus(ECHO_SECRET),
            "quote": quote(ECHO_SECRET, safe=""), "json": json.dumps(ECHO_SECRET)[1:-1],
            "basic": basic, "basic unpadded": basic.rstrip("="),
            "basic header": "Basic " + basic}


def assert_no_secret(texts: list[str]) -> None:
    leaked = [(name, text) for text in texts for name, form in echoed_forms().items()
              if form.rstrip("=") in text or ECHO_SECRET[:12] in text]
    assert not leaked


def echo_answer(where: str, echoed: str, padding: str = "x" * 180) -> Scripted:
    """``padding`` of 180 characters: the secret straddles the 200-character cut."""
    if where == "400 body":
        return Scripted(400, f"{padding}{echoed}".encode())
    if where == "500 body":
        return Scripted(500, f"{padding}{echoed}".encode())
    if where == "error_description":
        return Scripted(401, json.dumps({"error": "invalid_client",
                                         "error_description": f"{padding}{echoed}"}
                                        ).encode())
    if where == "error":
        return Scripted(401, json.dumps({"error": echoed.replace('"', "'")}).encode())
    if where == "token_type":
        return Scripted(body=json.dumps({"access_token": "t", "token_type": echoed}).encode())
    # http.client quotes a status line it cannot read in its error
    return Scripted(status=echoed.replace(" ", "_"), body=b"")  # type: ignore[arg-type]


@pytest.mark.parametrize("form", list(echoed_forms()))
@pytest.mark.parametrize("where", ["400 body", "500 body", "error_description", "error",
                                   "token_type", "status line"])
@pytest.mark.parametrize("auth_method", ["client_secret_post", "client_secret_basic"])
def test_a_secret_echoed_in_an_answer_reaches_no_error_and_no_log_line(
        form, where, auth_method, faulty, caplog):
    server = faulty(script=[echo_answer(where, echoed_forms()[form])])
    idp = resilient(server.url, auth_method=auth_method, failure_threshold=10, sleep=no_pause)
    with pytest.raises(IdpError) as caught:
        idp.fetch_token(ECHO_ID, ECHO_SECRET, "")
    error = caught.value
    assert_no_secret([str(error), error.reason, error.body, error.description,
                      *(str(record.__dict__) for record in caplog.records)])
    if where in ("400 body", "500 body"):
        assert error.body.endswith("********")
    if where == "error_description":
        assert error.description.startswith("xxx")
        assert error.description.endswith("********")
    if where == "error":  # an error code holding the secret is not taken as a code
        assert error.error_code == "invalid_client"
        assert "without an OAuth2 error body" in error.description


def reencoded_forms() -> dict[str, str]:
    """Encodings of the secret the request never used, as echoing servers write them."""
    def lower_hex(text: str) -> str:
        return re.sub("%[0-9A-F]{2}", lambda match: match.group().lower(), text)

    def b64(data: str, urlsafe: bool = False) -> str:
        encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
        return encode(data.encode()).decode()

    pair = f"{ECHO_ID}:{ECHO_SECRET}"
    return {
        "quote lower-case hex": lower_hex(quote(ECHO_SECRET, safe="")),
        "quote_plus lower-case hex": lower_hex(quote_plus(ECHO_SECRET)),
        "quote mixed-case hex": quote(ECHO_SECRET, safe="").replace("%2F", "%2f"),
        "json \\/ (PHP)": json.dumps(ECHO_SECRET).replace("/", "\\/")[1:-1],
        "json \\u002f": json.dumps(ECHO_SECRET)[1:-1].replace("/", "\\u002f"),
        "json every character \\u": "".join(f"\\u{ord(c):04x}" for c in ECHO_SECRET),
        "base64 of the secret": b64(ECHO_SECRET),
        "base64 unpadded": b64(ECHO_SECRET).rstrip("="),
        "base64url of the secret": b64(ECHO_SECRET, urlsafe=True),
        "base64 of id:secret": b64(pair),
        "base64url of id:secret unpadded": b64(pair, urlsafe=True).rstrip("="),
        "html named": html.escape(ECHO_SECRET),
        "html numeric": "".join(f"&#{ord(c)};" for c in ECHO_SECRET),
        "html then percent": quote(html.escape(ECHO_SECRET), safe=""),
    }


@pytest.mark.parametrize("form", list(reencoded_forms()))
@pytest.mark.parametrize("where", ["400 body", "500 body", "error_description", "error"])
def test_a_secret_echoed_in_another_encoding_reaches_no_error_and_no_log_line(
        form, where, faulty, caplog):
    echoed = reencoded_forms()[form]
    server = faulty(script=[echo_answer(where, echoed, padding="x" * 10)])
    idp = resilient(server.url, failure_threshold=10, sleep=no_pause)
    with pytest.raises(IdpError) as caught:
        idp.fetch_token(ECHO_ID, ECHO_SECRET, "")
    error = caught.value
    texts = [str(error), error.reason, error.body, error.description,
             *(str(record.__dict__) for record in caplog.records)]
    assert_no_secret(texts)
    assert not [text for text in texts if echoed[:16] in text]
    if where == "error":
        assert error.error_code == "invalid_client"


def test_refusals_are_logged_a_line_a_second_not_a_line_a_request(faulty, caplog):
    server = faulty(status=401, body=b'{"error": "invalid_client"}')
    idp = resilient(server.url)
    caplog.set_level(logging.INFO)
    for _ in range(20):
        with pytest.raises(IdpRefused):
            idp.fetch_token("c", "wrong", "")
    assert server.calls == 20  # each request is still asked and answered
    [line] = failure_lines(caplog)  # the interval is 1 s: 20 fast refusals, one line
    assert (line.error_code, line.suppressed, line.levelname) == ("invalid_client", 0, "INFO")
