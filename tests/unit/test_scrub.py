"""The client secret taken out of what an IdP answered (idp/scrub.py), on strings: every
secret of 4 characters or more (docs/security.md), in each form the request carried it."""

from __future__ import annotations

import base64
import html
import json
from urllib.parse import quote, quote_plus

import pytest

from token_worker.idp.scrub import NO_SECRET, REDACTED, WITHHELD, Scrubber

CLIENT = "orders-client"


@pytest.mark.parametrize("secret", ["s3c4", "s3c4x", "pass-8ch", "fifteen-chars15",
                                    "sixteen-chars-16", "a-much-longer-client-secret-0123"])
def test_every_secret_of_four_characters_or_more_is_scrubbed(secret):
    text = f"invalid_client: secret {secret} is not {CLIENT}'s"
    scrubbed = Scrubber(CLIENT, secret)(text)
    assert scrubbed == f"invalid_client: secret {REDACTED} is not {CLIENT}'s"
    assert Scrubber(CLIENT, secret).found_in(text)


def test_a_secret_under_four_characters_is_left_alone():
    """It would match ordinary words; the log redaction leaves it too."""
    scrubber = Scrubber(CLIENT, "abc")
    assert scrubber("abc and abcd") == "abc and abcd"
    assert not scrubber.found_in("abc")


SECRET = "p@ss w/rd+ü&<x>"
"""A secret every encoding changes: reserved, space, slash, plus, non-ASCII, HTML."""


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("echoed", [
    SECRET,
    quote_plus(SECRET),
    quote(SECRET),
    quote(SECRET, safe=""),
    quote(SECRET, safe="").lower(),                              # lower-case percent hex
    json.dumps(SECRET)[1:-1],
    json.dumps(SECRET, ensure_ascii=False)[1:-1],
    "p@ss w&#47;rd+&#252;&amp;&lt;x&gt;",                        # HTML entities
    json.dumps(SECRET).replace("/", "\\/")[1:-1],                # PHP's escaped slash
    base64.b64encode(SECRET.encode()).decode(),
    base64.urlsafe_b64encode(SECRET.encode()).decode().rstrip("="),
    basic(CLIENT, SECRET),                                       # the Basic header
    basic(quote_plus(CLIENT), quote_plus(SECRET)),               # RFC 6749 2.3.1 form
])
def test_no_form_of_the_secret_survives(echoed):
    """Whatever an IdP or proxy echoed, the secret is not readable in what is kept: the
    form is replaced, or the whole text withheld."""
    text = f"error: could not verify {echoed} for {CLIENT}"
    scrubbed = Scrubber(CLIENT, SECRET)(text)
    assert scrubbed != text
    assert echoed not in scrubbed and SECRET not in scrubbed
    assert scrubbed == WITHHELD or REDACTED in scrubbed


TRICKY = 'pa"ss\\w/rd+ü&<x> y'
"""A secret every encoding changes, JSON's too (a quote and a backslash)."""


@pytest.mark.parametrize("form", [
    TRICKY, quote_plus(TRICKY), quote(TRICKY), quote(TRICKY, safe=""),
    quote(TRICKY, safe="").lower(), html.escape(TRICKY),
    json.dumps(TRICKY)[1:-1], json.dumps(TRICKY, ensure_ascii=False)[1:-1],
    base64.b64encode(TRICKY.encode()).decode(),
    base64.urlsafe_b64encode(TRICKY.encode()).decode().rstrip("="),
    basic(CLIENT, TRICKY), basic(quote_plus(CLIENT), quote_plus(TRICKY)),
    basic(quote(CLIENT, safe=""), quote(TRICKY, safe="")),
], ids=["raw", "form", "quote", "quote-all", "lower-hex", "html", "json", "json-unicode",
        "base64", "base64url", "basic", "basic-form", "basic-quoted"])
def test_each_form_the_request_carried_is_replaced_and_the_rest_kept(form):
    """The module's first layer: the forms the request carried the secret in (raw, form-
    encoded, JSON- and HTML-escaped, base64, the Basic header) are replaced in place, so the
    rest of the IdP's text stays readable."""
    text = f"error: could not verify {form} for {CLIENT}"
    assert Scrubber(CLIENT, TRICKY)(text) == f"error: could not verify {REDACTED} for {CLIENT}"


@pytest.mark.parametrize("form", [
    json.dumps(TRICKY).replace("/", "\\/")[1:-1],              # PHP's escaped slash
    "".join(f"&#{ord(char)};" for char in TRICKY),               # HTML numeric entities
    quote(quote(TRICKY, safe=""), safe=""),                      # percent-encoded twice
    quote(quote(quote(TRICKY, safe=""), safe=""), safe=""),      # three times
    quote(html.escape(json.dumps(TRICKY).replace("/", "\\/")[1:-1]), safe=""),  # 3 kinds
    "".join(f"\\u{ord(char):04x}" for char in TRICKY),           # JSON escapes for all
], ids=["php", "entities", "double-percent", "triple-percent", "json-html-percent",
        "json-u-escapes"])
def test_a_secret_that_shows_only_once_decoded_withholds_the_whole_text(form):
    """The second layer: an echo re-encoded in a way no list keeps up with is found by
    decoding, and then nothing of the text is kept."""
    assert Scrubber(CLIENT, TRICKY)(f"error: could not verify {form}") == WITHHELD


def test_a_text_without_the_secret_is_kept_as_it_was():
    text = 'error="invalid_client", description: unknown client orders-client'
    assert Scrubber(CLIENT, SECRET)(text) == text
    assert not Scrubber(CLIENT, SECRET).found_in(text)
    assert NO_SECRET(text) == text


def test_a_longer_form_containing_another_is_replaced_whole():
    """The form-encoded secret contains the raw one's start: replaced as one, no tail
    of it left beside a mark."""
    secret = "ab+cd/ef"
    text = f"got {quote(secret, safe='')}"
    assert Scrubber(CLIENT, secret)(text) == f"got {REDACTED}"


LONG_ASCII = "".join(f"{index:04d}/+" for index in range(550))  # 3,300 characters


@pytest.mark.parametrize(("secret", "encode"), [
    (LONG_ASCII, str), (LONG_ASCII, quote_plus),
    ("\U0001f600" * 2800, lambda secret: quote(secret, safe="")),  # 12 characters each
], ids=["raw", "form", "percent-emoji"])
def test_an_error_excerpt_never_shows_the_start_of_a_secret_cut_by_the_scrub_window(
        secret, encode):
    """A body full of a long secret, cut by the window scrubbed first (64 KiB): scrubbing
    shrinks the window so much that the cut secret's first characters would land in the
    200-character excerpt, unless the whole body is scrubbed. It must be, for any encoding
    of the secret (the longest: 12 characters for one, a 4-byte character in percent)."""
    import urllib3

    from token_worker.idp.answers import EXCERPT_WINDOW, error_for
    from token_worker.idp.http import Answer

    echo = encode(secret)
    copies = EXCERPT_WINDOW // (len(echo) + 1) + 2  # the window ends inside a copy
    body = (" ".join([echo] * copies)).encode()
    error = error_for(Answer(500, urllib3.HTTPHeaderDict(), body), "https://idp.test/token",
                      10 * EXCERPT_WINDOW, Scrubber(CLIENT, secret))
    assert error.body and secret[:12] not in error.body and echo[:12] not in error.body


def test_json_escapes_of_any_character_are_decoded():
    """\\uXXXX for characters past U+0FFF too (the euro sign, CJK), not only Latin-1."""
    secret = "pa\u20acss\u4e2d\u6587-x"
    echoed = "".join(f"\\u{ord(char):04x}" for char in secret)
    assert Scrubber(CLIENT, secret)(f"bad secret {echoed}") == WITHHELD
