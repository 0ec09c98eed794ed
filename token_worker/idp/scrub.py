"""Taking a client secret out of what an identity provider answered.

An IdP (or a proxy in front of it) may echo the request in an error: every text taken from
an answer (body excerpt, ``error_description``, reason) has the secret scrubbed, in every
form it was sent in (raw, form-encoded, inside the Basic header, base64), and a text in
which the secret shows only once decoded (percent, JSON or HTML escapes) is withheld
whole, before it is stored on the error (:class:`Scrubber`). What else a call holds that
must never be shown is scrubbed the same way (``also``): a client assertion, the key it
was signed with or a TLS client key, a proxy's password and its ``Proxy-Authorization``.

The forms are worked out on first use: a call whose answer is a token never needs them.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable
from urllib.parse import quote, quote_plus, unquote, unquote_plus

__all__ = ["NO_SECRET", "REDACTED", "WITHHELD", "Scrubber"]


REDACTED = "********"
"""What a scrubbed secret is replaced with."""


class Scrubber:
    """Takes a client secret (and the other values of ``also``) out of texts an IdP
    answered.

    Two layers. The forms the request carried each value in are replaced by
    :data:`REDACTED`: raw, form-encoded (``quote_plus`` and ``quote``), JSON- and
    HTML-escaped, base64 and base64url of the value alone and, for the client secret, of
    the ``user:password`` of a Basic header. Then, since an echo may re-encode it in ways
    no list keeps up with (lower-case percent hex, PHP's ``\\/``, ``\\u002f``,
    ``&#47;``), the text is decoded (JSON escapes, HTML entities, percent-encoding, in the
    orders a proxy may stack them): if a value shows in any decoded copy, the whole text
    is replaced by :data:`WITHHELD`.

    Values shorter than :attr:`MIN_LENGTH` are left alone: replacing a two-letter secret
    would mangle every word holding those letters (the log filter does the same).
    """

    MIN_LENGTH = 4

    __slots__ = ("_client_id", "_client_secret", "_forms", "_secrets", "longest")

    def __init__(self, client_id: str = "", client_secret: str = "", *,
                 also: tuple[str, ...] = ()) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self._secrets = tuple(value for value in (client_secret, *also)
                              if len(value) >= self.MIN_LENGTH)
        self._forms: list[str] | None = None
        # an escape stands for a character in at most 12 (``\ud83d\ude00``, ``%F0%9F%98%80``)
        self.longest = 12 * max((len(value) for value in self._secrets), default=0)
        """Characters the longest encoding of a value may take."""

    def __call__(self, text: str) -> str:
        """``text`` with every form of every value replaced by :data:`REDACTED`, or
        :data:`WITHHELD` if one still shows once the text is decoded."""
        for form in self.forms:
            if form in text:
                text = text.replace(form, REDACTED)
        if self._secrets and self._decodes_to_secret(text):
            return WITHHELD
        return text

    def found_in(self, text: str) -> bool:
        return any(form in text for form in self.forms) or bool(
            self._secrets and self._decodes_to_secret(text))

    @property
    def forms(self) -> list[str]:
        """Every form a value may be echoed in, longest first (so a form containing
        another is replaced whole); worked out once, on first use."""
        if self._forms is None:
            forms: set[str] = set()
            for value in self._secrets:
                forms |= _forms_of(value)
            if len(self._client_secret) >= self.MIN_LENGTH:
                forms |= _basic_forms(self._client_id, self._client_secret)
            self._forms = sorted((form for form in forms if len(form) >= self.MIN_LENGTH),
                                 key=len, reverse=True)
        return self._forms

    def _decodes_to_secret(self, text: str) -> bool:
        """True if a value shows in ``text`` once up to three layers of JSON, HTML and
        percent escapes (as ``quote`` and as ``quote_plus``) are undone, in any order."""
        copies = {text}
        layer = {text}
        for _ in range(3):
            layer = {decode(copy) for copy in layer for decode in _DECODERS} - copies
            copies |= layer
        return any(value in copy for copy in copies for value in self._secrets)


def _forms_of(value: str) -> set[str]:
    """The forms a request may carry ``value`` in, and an echo give it back in."""
    forms = {value, quote_plus(value), quote(value), quote(value, safe=""),
             html.escape(value), json.dumps(value)[1:-1],
             json.dumps(value, ensure_ascii=False)[1:-1]}
    forms |= {_lower_hex(form) for form in forms}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        encoded = encode(value.encode()).decode()
        forms |= {encoded, encoded.rstrip("=")}
    return forms


def _basic_forms(client_id: str, client_secret: str) -> set[str]:
    """The Basic header's ``user:password`` (as RFC 6749 and as others encode it), base64."""
    forms: set[str] = set()
    for pair in (f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}",
                 f"{quote_plus(client_id)}:{quote_plus(client_secret)}",
                 f"{client_id}:{client_secret}"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(pair.encode()).decode()
            forms |= {encoded, encoded.rstrip("=")}
    return forms


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
NO_SECRET = Scrubber()
