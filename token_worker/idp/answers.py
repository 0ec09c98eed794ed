"""Reading an answer of the token endpoint: a token, or the error it means.

Every answer is classified by what a retry could change (:mod:`token_worker.idp.resilience`
decides the retries):

- transient: 5xx, 429 (:class:`~token_worker.errors.IdpUnavailable`);
- refused: a 4xx, with the OAuth2 code the IdP sent, or, for a bare 400/401/403, the code
  RFC 6749 5.2 gives that status (:class:`~token_worker.errors.IdpRefused`);
- unusable: a 2xx that is not a usable token response, any redirect (never followed, so the
  secret never reaches another host), an answer over ``idp.maxResponseBytes``, an unknown
  token type (:class:`~token_worker.errors.IdpBadResponse`).

It reads liberally what RFC 6749 5.1 allows: ``expires_in`` as any JSON number or a
numeric string (rounded down; missing means ``idp.defaultExpiresIn``), ``token_type`` in
any case (normalised to ``Bearer``), a missing ``scope`` as the scope asked for, and
form-encoded answers (as golang.org/x/oauth2 does). Only the allow-listed fields are kept:
refresh and id tokens are dropped unread. The body of a 2xx is never logged or quoted (it
may hold a token), error bodies only as a 200-character excerpt, scrubbed of the secret
(:mod:`token_worker.idp.scrub`).
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import orjson
from urllib3.exceptions import ProtocolError

from token_worker import wire
from token_worker.config import IdpConfig
from token_worker.errors import IdpBadResponse, IdpError, IdpRefused, IdpUnavailable
from token_worker.idp.http import Answer
from token_worker.idp.scrub import Scrubber
from token_worker.tokens.model import IssuedToken

__all__ = ["EXCERPT_CHARS", "error_for", "issued_token", "json_object", "network_reason",
           "origin"]

EXCERPT_CHARS = 200
"""Characters of an error answer's body kept for the log line."""
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
EXCERPT_WINDOW = 64 * 1024
"""Bytes of an error body scrubbed to make its excerpt (all of it when the excerpt would
reach the window's end, so a secret cut by the window cannot leak its first half)."""


def issued_token(answer: Answer, scope: str, config: IdpConfig, scrub: Scrubber
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


def _token_type(value: object, status: int, scrub: Scrubber) -> str:
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


def error_for(answer: Answer, token_url: str, max_bytes: int, scrub: Scrubber
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


def _refusal(answer: Answer, excerpt: str, scrub: Scrubber) -> IdpError:
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


def _error_fields(answer: Answer) -> dict[str, Any]:
    if not answer.content:
        return {}
    media = answer.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        return dict(parse_qsl(answer.content.decode("utf-8", "replace")))
    return json_object(answer.content) or {}


def _redirect_reason(location: str | None, token_url: str, scrub: Scrubber) -> str:
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
    return f"redirect to {_printable(_authority(hostname, port), 100, scrub)}"


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what a log line may name of a URL an IdP gave
    (an IPv6 host keeps its brackets: ``http://[::1]:9400``)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{_authority(parts.hostname, parts.port)}"
    except ValueError:
        return "(unparsable)"


def _authority(hostname: str | None, port: int | None) -> str:
    """``host[:port]``, an IPv6 address in brackets (``[::1]:9400``), so it reads back."""
    host = hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return host + (f":{port}" if port else "")


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


def network_reason(error: BaseException, scrub: Scrubber) -> str:
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


def _excerpt(content: bytes | None, scrub: Scrubber) -> str:
    """The start of an error answer's body, for the log line, the secret scrubbed."""
    if not content:
        return ""
    window = content[:EXCERPT_WINDOW]
    flat = _flat(scrub(window.decode("utf-8", "replace")), scrub)
    if len(content) > len(window) and len(flat) < EXCERPT_CHARS + scrub.longest:
        flat = _flat(scrub(content.decode("utf-8", "replace")), scrub)  # bounded by maxbytes
    return _cut(flat, EXCERPT_CHARS)


def _printable(text: str, limit: int, scrub: Scrubber) -> str:
    """``text`` on one line without the secret, cut to ``limit`` characters (scrubbed
    before the cut, so no prefix of a secret is left at the end)."""
    return _cut(_flat(scrub(text), scrub), limit)


def _flat(text: str, scrub: Scrubber) -> str:
    """One line; scrubbed again, as removing control characters may join a secret up."""
    return scrub(_UNPRINTABLE.sub(" ", text).strip())


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def json_object(data: bytes | None) -> dict[str, Any] | None:
    try:
        body = orjson.loads(data or b"")
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _json_kind(value: object) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
