"""The identity provider: one OAuth2 client-credentials call over pooled HTTP connections.

Every answer is classified by what a retry could change (:mod:`token_worker.resilience`
decides the retries):

- transient: unreachable, timed out, 5xx, 429 (:class:`IdpUnavailable`, :class:`IdpTimeout`);
- refused: a 4xx, with the OAuth2 code the IdP sent, or, for a bare 400/401/403, the code
  RFC 6749 5.2 gives that status (:class:`IdpRefused`);
- unusable: a 2xx that is not a usable token response, any redirect (never followed, so the
  secret never reaches another host), an answer over ``idp.maxResponseBytes``, an unknown
  token type (:class:`IdpBadResponse`).

It reads liberally what RFC 6749 5.1 allows: ``expires_in`` as any JSON number or a
numeric string (rounded down; missing means ``idp.defaultExpiresIn``), ``token_type`` in
any case (normalised to ``Bearer``), a missing ``scope`` as the scope asked for, and
form-encoded answers (as golang.org/x/oauth2 does). Only the allow-listed fields are kept:
refresh and id tokens are dropped unread.

Each attempt is bounded as a whole: ``timeout`` covers connect, headers and body, however
slowly the bytes trickle (each socket read waits only for the time left), and the body is
read in chunks up to ``idp.maxResponseBytes`` (a larger ``Content-Length`` is refused
unread). The client secret goes into the request and nowhere else; the body of a 2xx is
never logged or quoted (it may hold a token), error bodies only as a 200-character excerpt.
An IdP (or a proxy in front of it) may echo the request in an error: every text taken from
an answer (body excerpt, ``error_description``, reason) has the secret scrubbed, in every
form it was sent in (raw, form-encoded, inside the Basic header, base64), and a text in
which the secret shows only once decoded (percent, JSON or HTML escapes) is withheld
whole, before it is stored on the error (:class:`_Scrubber`).

With ``idp.issuer``, the discovered token endpoint must be as safe as the issuer: an
``https`` issuer naming an ``http`` token endpoint is refused (the secret would go out in
clear text).

HTTP is urllib3's connection pool, used directly: measured against the test IdP, a token
call costs 0.5 ms of CPU this way against 1.4 ms through requests (built on the same
urllib3), which matters on every cache miss.
"""

from __future__ import annotations

import base64
import email.utils
import html
import http.client
import io
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import (
    parse_qsl,
    quote,
    quote_plus,
    unquote,
    unquote_plus,
    urlencode,
    urljoin,
    urlsplit,
)

import orjson
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as HttpTimeout

from token_worker import wire
from token_worker.config import IdpConfig
from token_worker.errors import IdpBadResponse, IdpError, IdpRefused, IdpTimeout, IdpUnavailable

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger(__name__)

USER_AGENT = "token-worker"
EXCERPT_CHARS = 200
"""Characters of an error answer's body kept for the log line."""
READ_CHUNK = 64 * 1024
"""Bytes read from a body at a time."""
LONGEST_EXPIRES_IN = 2**31 - 1
"""``expires_in`` is clamped here, so any number the IdP sends fits a reply."""
BARE_STATUS_CODES = {400: "invalid_request", 401: "invalid_client", 403: "unauthorized_client"}
"""The OAuth2 code of a 4xx without an OAuth2 error body (RFC 6749 5.2: ``invalid_client``
is failed client authentication, answered with 401)."""

_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?")
_ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,128}")
"""RFC 6749 5.2: an ``error`` is printable ASCII without ``"`` and ``\\``."""
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")
"""Control characters (C0, DEL, C1), Unicode line and paragraph separators and bidi
controls: none of them is kept in a text taken from an answer."""
REDACTED = "********"
"""What a scrubbed secret is replaced with."""
EXCERPT_WINDOW = 64 * 1024
"""Bytes of an error body scrubbed to make its excerpt (all of it when the excerpt would
reach the window's end, so a secret cut by the window cannot leak its first half)."""


@dataclass(frozen=True)
class IssuedToken:
    """An access token as the IdP issued it, with the moment it was issued."""

    access_token: str
    token_type: str
    expires_in: int
    scope: str
    issued_at: float
    """``time.time()`` when the IdP's answer arrived."""

    def __repr__(self) -> str:
        return (f"IssuedToken(token_type={self.token_type!r}, expires_in={self.expires_in}, "
                f"scope={self.scope!r}, access_token='********')")


@dataclass(frozen=True)
class _Answer:
    """An HTTP answer read within its bounds; ``content`` is None when it was too large or
    not read (a redirect)."""

    status: int
    headers: urllib3.HTTPHeaderDict
    content: bytes | None


class _Scrubber:
    """Takes a client secret out of texts an IdP answered.

    Two layers. The forms the request carried it in are replaced by :data:`REDACTED`: raw,
    form-encoded (``quote_plus`` and ``quote``), JSON- and HTML-escaped, base64 and
    base64url of the secret alone and of the ``user:password`` of a Basic header. Then,
    since an echo may re-encode it in ways no list keeps up with (lower-case percent hex,
    PHP's ``\\/``, ``\\u002f``, ``&#47;``), the text is decoded (JSON escapes, HTML
    entities, percent-encoding, in the orders a proxy may stack them): if the secret shows
    in any decoded copy, the whole text is replaced by :data:`WITHHELD`.

    Secrets shorter than :attr:`MIN_LENGTH` are left alone: replacing a two-letter secret
    would mangle every word holding those letters (the log filter does the same).
    """

    MIN_LENGTH = 4

    __slots__ = ("_forms", "_secret", "longest")

    def __init__(self, client_id: str = "", client_secret: str = "") -> None:
        forms: set[str] = set()
        self._secret = client_secret if len(client_secret) >= self.MIN_LENGTH else ""
        if self._secret:
            forms = {client_secret, quote_plus(client_secret), quote(client_secret),
                     quote(client_secret, safe=""), html.escape(client_secret),
                     json.dumps(client_secret)[1:-1],
                     json.dumps(client_secret, ensure_ascii=False)[1:-1]}
            forms |= {_lower_hex(form) for form in forms}
            for pair in (f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}",
                         f"{quote_plus(client_id)}:{quote_plus(client_secret)}",
                         f"{client_id}:{client_secret}", client_secret):
                for encode in (base64.b64encode, base64.urlsafe_b64encode):
                    encoded = encode(pair.encode()).decode()
                    forms |= {encoded, encoded.rstrip("=")}
        # longest first, so a form containing another is replaced whole
        self._forms = sorted((form for form in forms if len(form) >= self.MIN_LENGTH),
                             key=len, reverse=True)
        # an escape stands for a character in at most 12 (``\ud83d\ude00``, ``%F0%9F%98%80``)
        self.longest = 12 * len(self._secret)
        """Characters the longest encoding of the secret may take."""

    def __call__(self, text: str) -> str:
        """``text`` with every form of the secret replaced by :data:`REDACTED`, or
        :data:`WITHHELD` if the secret still shows once the text is decoded."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        if self._secret and self._decodes_to_secret(text):
            return WITHHELD
        return text

    def found_in(self, text: str) -> bool:
        return any(form in text for form in self._forms) or bool(
            self._secret and self._decodes_to_secret(text))

    def _decodes_to_secret(self, text: str) -> bool:
        """True if the secret shows in ``text`` once up to three layers of JSON, HTML and
        percent escapes (as ``quote`` and as ``quote_plus``) are undone, in any order."""
        copies = {text}
        layer = {text}
        for _ in range(3):
            layer = {decode(copy) for copy in layer for decode in _DECODERS} - copies
            copies |= layer
        return any(self._secret in copy for copy in copies)


WITHHELD = "(answer quoted the client secret; not shown)"
"""What stands for a whole text the secret was found in only once decoded."""

_PERCENT = re.compile("%[0-9A-F]{2}")
_JSON_ESCAPE = re.compile(r'\\(u[0-9a-fA-F]{4}|["\\/bfnrt])')
_JSON_SHORT = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _json_char(match: re.Match[str]) -> str:
    escape = match.group(1)
    if escape[0] == "u":
        return chr(int(escape[1:], 16))
    return _JSON_SHORT.get(escape, escape)


def _lower_hex(text: str) -> str:
    """``text`` with its percent escapes in lower-case hex (``%2f``), as some servers write."""
    return _PERCENT.sub(lambda match: match.group().lower(), text)


def _json_unescape(text: str) -> str:
    """``text`` with JSON string escapes undone (``\\/``, ``\\u00e9``, surrogate pairs)."""
    if "\\" not in text:
        return text
    joined = _JSON_ESCAPE.sub(_json_char, text)
    return joined.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


_DECODERS: tuple[Callable[[str], str], ...] = (
    _json_unescape, html.unescape, unquote, unquote_plus)

_NO_SECRET = _Scrubber()


class IdpClient:
    """Asks the token endpoint for client-credentials tokens; safe to share between threads.

    One urllib3 pool keeps up to ``pool_size`` kept-alive connections per host, so a busy
    worker does not open a TCP (and TLS) connection per request. Retries are not urllib3's
    business here: :mod:`token_worker.resilience` decides them.
    """

    def __init__(self, config: IdpConfig, *, pool_size: int = 10) -> None:
        self._config = config
        self._token_url = "" if config.issuer else config.token_url
        self._discovery_lock = threading.Lock()
        self._http = urllib3.PoolManager(
            num_pools=4, maxsize=pool_size, retries=False,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
        self._http.pool_classes_by_scheme = {"http": _BoundedPool, "https": _BoundedHttpsPool}

    @property
    def known_token_url(self) -> str:
        """The token endpoint if known without I/O, else ""."""
        return self._token_url

    @property
    def token_url(self) -> str:
        """The token endpoint; with ``idp.issuer``, read once from OIDC discovery."""
        if not self._token_url:
            with self._discovery_lock:
                if not self._token_url:
                    self._token_url = self._discover()
        return self._token_url

    def _discover(self) -> str:
        issuer = (self._config.issuer or "").rstrip("/")
        url = issuer + "/.well-known/openid-configuration"
        try:
            answer = self._exchange("GET", url, self._config.timeout)
        except IdpError as error:
            raise IdpUnavailable(f"OIDC discovery at {url} failed: {error.reason}",
                                 reason=error.reason, status=error.status) from None
        document = _json_object(answer.content) if answer.status == 200 else None
        endpoint = document.get("token_endpoint") if document else None
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise IdpUnavailable(f"OIDC discovery at {url} gave no token_endpoint "
                                 f"(HTTP {answer.status})", status=answer.status,
                                 reason=f"HTTP {answer.status}, no token_endpoint")
        if issuer.lower().startswith("https://") and not endpoint.lower().startswith("https://"):
            reason = "token_endpoint is http under an https issuer"
            log.error("discovered token endpoint refused: the secret would go out unencrypted",
                      extra={"issuer": issuer, "token_url": _origin(endpoint),
                             "reason": reason})
            raise IdpUnavailable(f"OIDC discovery at {url} refused: {reason}", reason=reason)
        log.info("token endpoint discovered", extra={"issuer": issuer, "token_url": endpoint})
        return endpoint

    def fetch_token(self, client_id: str, client_secret: str, scope: str, *,
                    timeout: float | None = None,
                    auth_method: str | None = None) -> IssuedToken:
        """Run the client-credentials grant once, within ``timeout`` seconds (connect, headers
        and body; default ``idp.timeout``); raise an :class:`~token_worker.IdpError`.
        ``auth_method`` overrides ``idp.authMethod`` (a named credential's own)."""
        form = {"grant_type": "client_credentials"}
        if scope:
            form["scope"] = scope
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if (auth_method or self._config.auth_method) == "client_secret_basic":
            headers["Authorization"] = _basic_auth(client_id, client_secret)
        else:
            form["client_id"] = client_id
            form["client_secret"] = client_secret
        token_url = self.token_url
        limit = self._config.timeout if timeout is None else timeout
        scrub = _Scrubber(client_id, client_secret)
        started = time.monotonic()
        answer = self._exchange("POST", token_url, limit, body=urlencode(form), headers=headers,
                                scrub=scrub)
        log.debug("idp answered", extra={"status": answer.status,
                                         "idp_ms": round((time.monotonic() - started) * 1000, 1)})
        if 200 <= answer.status < 300:
            return _issued_token(answer, scope, self._config, scrub)
        raise _error_for(answer, token_url, self._config.max_response_bytes, scrub)

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.clear()

    def _exchange(self, method: str, url: str, limit: float, *, body: str | None = None,
                  headers: dict[str, str] | None = None, scrub: _Scrubber = _NO_SECRET
                  ) -> _Answer:
        """One HTTP exchange, finished within ``limit`` seconds, body capped, never
        following a redirect; network failures become :class:`IdpError`."""
        _attempt.deadline = time.monotonic() + limit
        try:
            response = self._http.request(
                method, url, body=body, headers=headers, redirect=False,
                timeout=urllib3.Timeout(connect=limit, read=limit), preload_content=False)
            return _read_answer(response, self._config.max_response_bytes)
        except NewConnectionError as error:  # refused, unresolved: urllib3 files it as timeout
            reason = _network_reason(error, scrub)  # a bad status line is quoted in it
            raise IdpUnavailable(f"identity provider unreachable: {reason}",
                                 reason=reason) from None
        except HttpTimeout as error:
            what = "connect" if isinstance(error, ConnectTimeoutError) else "complete answer"
            reason = f"no {what} within {limit:.3g} s"
            raise IdpTimeout(f"identity provider gave {reason}", reason=reason) from None
        except (HTTPError, OSError, http.client.HTTPException) as error:
            reason = _network_reason(error, scrub)  # a bad status line is quoted in it
            raise IdpUnavailable(f"identity provider unreachable: {reason}",
                                 reason=reason) from None
        finally:
            _attempt.deadline = None


# --- bounded reading ------------------------------------------------------------------

_attempt = threading.local()
"""``deadline``: the monotonic end of the HTTP attempt running on this thread, if any."""


class _DeadlineReader(io.RawIOBase):
    """A socket's reading end that gives up at a deadline however slowly bytes trickle:
    each read waits only for the time left (urllib3's read timeout is per read)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)  # holds the socket open, as makefile does
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the attempt's time is up")  # socket.timeout: urllib3 knows it
        self._sock.settimeout(left)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """What http.client's response reads through: the socket, bounded by a deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str, *_args: Any, **_kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _BoundedResponse(http.client.HTTPResponse):
    """http.client's response, reading headers and body within the attempt's deadline."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        deadline: float | None = getattr(_attempt, "deadline", None)
        if deadline is not None:
            sock = cast(socket.socket, _DeadlineSocket(sock, deadline))
        super().__init__(sock, *args, **kwargs)


class _BoundedConnection(HTTPConnection):
    response_class = _BoundedResponse


class _BoundedHttpsConnection(HTTPSConnection):
    response_class = _BoundedResponse


class _BoundedPool(HTTPConnectionPool):
    ConnectionCls = _BoundedConnection


class _BoundedHttpsPool(HTTPSConnectionPool):
    ConnectionCls = _BoundedHttpsConnection


def _read_answer(response: urllib3.BaseHTTPResponse, max_bytes: int) -> _Answer:
    """Read the body in chunks up to ``max_bytes``; a redirect's body is not read. The
    connection goes back to the pool only when the body was read to its end."""
    content: bytes | None = None
    try:
        if not 300 <= response.status < 400:
            content = _read_capped(response, max_bytes)
    finally:
        if content is None:
            response.close()  # unread bytes left: the connection cannot be reused
        response.release_conn()
    return _Answer(response.status, response.headers, content)


def _read_capped(response: urllib3.BaseHTTPResponse, max_bytes: int) -> bytes | None:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and not response.headers.get("Content-Encoding"):
        if int(length) > max_bytes:
            return None  # refused without reading a byte of it
        return response.read()  # exactly Content-Length bytes, at most max_bytes
    chunks: list[bytes] = []
    total = 0
    while chunk := response.read(READ_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


# --- reading the answer ------------------------------------------------------------------

def _basic_auth(client_id: str, client_secret: str) -> str:
    """RFC 6749 2.3.1: both parts form-encoded, then Basic (as Keycloak expects)."""
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _issued_token(answer: _Answer, scope: str, config: IdpConfig, scrub: _Scrubber
                  ) -> IssuedToken:
    """The token of a 2xx answer, or :class:`IdpBadResponse` saying what is wrong with it."""
    status = answer.status
    if answer.content is None:
        raise IdpBadResponse(f"larger than {config.max_response_bytes} bytes", status=status)
    fields = _token_fields(answer.content, answer.headers.get("Content-Type", ""), status)
    token = fields.get("access_token")
    if token is None:
        raise IdpBadResponse("no access_token", status=status)
    if not isinstance(token, str):
        raise IdpBadResponse("access_token not a string", status=status)
    if not token:
        raise IdpBadResponse("access_token empty", status=status)
    if not wire.ACCESS_TOKEN.fullmatch(token):
        raise IdpBadResponse("access_token has characters other than visible ASCII (spaces, "
                             "control characters, line separators)", status=status)
    return IssuedToken(
        access_token=token,
        token_type=_token_type(fields.get("token_type"), status, scrub),
        expires_in=_expires_in(fields, config.default_expires_in, status),
        scope=_scope(fields.get("scope"), scope, status),
        issued_at=time.time(),
    )


def _token_fields(content: bytes, content_type: str, status: int) -> dict[str, Any]:
    """The answer's fields: form-encoded if it says so (as x/oauth2 reads them), else JSON."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        try:
            return dict(parse_qsl(content.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            raise IdpBadResponse("form-encoded body not UTF-8", status=status) from None
    if not content.strip():
        raise IdpBadResponse("empty body", status=status)
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise IdpBadResponse("not JSON", status=status) from None
    if not isinstance(document, dict):
        raise IdpBadResponse(f"a JSON {_json_kind(document)}, not an object", status=status)
    return document


def _token_type(value: object, status: int, scrub: _Scrubber) -> str:
    """``Bearer`` in any case (x/oauth2 normalises it too); a missing type is taken as
    Bearer. DPoP, mac and others need a proof the worker never makes: not usable."""
    if value is None or value == "":
        return "Bearer"
    if not isinstance(value, str):
        raise IdpBadResponse("token_type not a string", status=status)
    if value.strip().lower() != "bearer":
        raise IdpBadResponse(f"token type {_printable(value, 40, scrub)} cannot be used "
                             f"without a "
                             f"proof", status=status)
    return "Bearer"


def _expires_in(fields: dict[str, Any], default: int, status: int) -> int:
    """Whole seconds (rounded down) from any JSON number or numeric string; missing is
    ``default`` (RFC 6749 5.1: the server's documented default applies)."""
    if "expires_in" not in fields:
        return default
    value = fields["expires_in"]
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise IdpBadResponse("expires_in not a number", status=status)
    if value < 0:
        raise IdpBadResponse("expires_in negative", status=status)
    return min(math.floor(value), LONGEST_EXPIRES_IN)


def _scope(value: object, requested: str, status: int) -> str:
    """The granted scope; omitted means as requested (RFC 6749 5.1)."""
    if value is None:
        return requested
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return " ".join(value)
    raise IdpBadResponse("scope not a string", status=status)


def _error_for(answer: _Answer, token_url: str, max_bytes: int, scrub: _Scrubber
               ) -> IdpError:
    """The error a non-2xx answer means."""
    status = answer.status
    excerpt = _excerpt(answer.content, scrub)
    if 300 <= status < 400:
        return IdpBadResponse(_redirect_reason(answer.headers.get("Location"), token_url,
                                               scrub), status=status)
    if status == 429 or 500 <= status < 600:
        retry_after = _retry_after(answer.headers.get("Retry-After"))
        said = f" (Retry-After {retry_after:.0f} s)" if retry_after is not None else ""
        what = "is rate limiting" if status == 429 else "failed"
        return IdpUnavailable(f"identity provider {what}: HTTP {status}{said}", status=status,
                              retry_after=retry_after, reason=f"HTTP {status}", body=excerpt)
    if 400 <= status < 500:
        return _refusal(answer, excerpt, scrub)
    if answer.content is None:
        return IdpBadResponse(f"larger than {max_bytes} bytes", status=status)
    return IdpBadResponse(f"unexpected HTTP status {status}", status=status, body=excerpt)


def _refusal(answer: _Answer, excerpt: str, scrub: _Scrubber) -> IdpError:
    """A 4xx: the OAuth2 error it carries, the code its bare status means, or unusable.
    An ``error`` holding the secret is no OAuth2 code: it is read as a bare status."""
    status = answer.status
    fields = _error_fields(answer)
    code = fields.get("error")
    if isinstance(code, str) and _ERROR_CODE.fullmatch(code) and not scrub.found_in(code):
        description = fields.get("error_description")
        return IdpRefused(code, status=status, body=excerpt, description=_printable(
            description, EXCERPT_CHARS, scrub) if isinstance(description, str) else "")
    if status in BARE_STATUS_CODES:
        return IdpRefused(BARE_STATUS_CODES[status], status=status, body=excerpt,
                          description=f"HTTP {status} without an OAuth2 error body")
    return IdpBadResponse(f"HTTP {status} without an OAuth2 error body", status=status,
                          body=excerpt)


def _error_fields(answer: _Answer) -> dict[str, Any]:
    if not answer.content:
        return {}
    media = answer.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        return dict(parse_qsl(answer.content.decode("utf-8", "replace")))
    return _json_object(answer.content) or {}


def _redirect_reason(location: str | None, token_url: str, scrub: _Scrubber) -> str:
    """``redirect to <host>``: the host is named, the rest of the target is not."""
    if not location:
        return "redirect without a Location"
    try:
        parts = urlsplit(urljoin(token_url, location.strip()))
        hostname = parts.hostname
    except ValueError:  # an unclosed IPv6 bracket, for one
        return "redirect to an unparsable location"
    try:
        port = parts.port
    except ValueError:
        port = None
    host = (hostname or "?") + (f":{port}" if port else "")
    return f"redirect to {_printable(host, 100, scrub)}"


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what a log line may name of a URL an IdP gave."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or '?'}" + (
            f":{parts.port}" if parts.port else "")
    except ValueError:
        return "(unparsable)"


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds, from delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    text = (value or "").strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _network_reason(error: BaseException, scrub: _Scrubber) -> str:
    """``ConnectionRefusedError: Connection refused``: the cause under urllib3's wrapping."""
    cause: BaseException = error
    if isinstance(error, ProtocolError) and len(error.args) > 1 and isinstance(
            error.args[1], BaseException):
        cause = error.args[1]
    elif error.__cause__ is not None:
        cause = error.__cause__
    detail = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
    text = f"{type(cause).__name__}: {detail}" if detail else type(cause).__name__
    return _printable(text, EXCERPT_CHARS, scrub)


def _excerpt(content: bytes | None, scrub: _Scrubber) -> str:
    """The start of an error answer's body, for the log line, the secret scrubbed."""
    if not content:
        return ""
    window = content[:EXCERPT_WINDOW]
    flat = _flat(scrub(window.decode("utf-8", "replace")), scrub)
    if len(content) > len(window) and len(flat) < EXCERPT_CHARS + scrub.longest:
        flat = _flat(scrub(content.decode("utf-8", "replace")), scrub)  # bounded by maxbytes
    return _cut(flat, EXCERPT_CHARS)


def _printable(text: str, limit: int, scrub: _Scrubber) -> str:
    """``text`` on one line without the secret, cut to ``limit`` characters (scrubbed
    before the cut, so no prefix of a secret is left at the end)."""
    return _cut(_flat(scrub(text), scrub), limit)


def _flat(text: str, scrub: _Scrubber) -> str:
    """One line; scrubbed again, as removing control characters may join a secret up."""
    return scrub(_UNPRINTABLE.sub(" ", text).strip())


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _json_object(data: bytes | None) -> dict[str, Any] | None:
    try:
        body = orjson.loads(data or b"")
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _json_kind(value: object) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
