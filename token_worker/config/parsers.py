"""Setting values: the parsers that turn a raw value (a JSON value, a string from the
environment or a flag, or a value given in code) into a typed, normalised one.

Each parser raises ``ValueError`` with a sentence that completes "invalid config X (from
Y): ...", and is idempotent (a parsed value parses to itself), so the config types can
run them on values given in code as the loader runs them on values read from a source.

Every duration, count and size is bounded at load: :func:`seconds` and
:func:`whole_number` make its parser from its bounds (``seconds(maximum=300,
positive=True)``), so a value no one means (``IDP_TIMEOUT=1e10``) stops the start naming
the setting and its source, instead of failing later where it is used.
"""

from __future__ import annotations

import math
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from token_worker import nkey_auth
from token_worker.secret import Secret, read_regular_file

# --- value parsers: each takes the raw value (JSON value, string, or a value given in code)
# and returns it typed and normalised, or raises ValueError with a sentence that completes
# "invalid config X (from Y): ...". Each is idempotent: a parsed value parses to itself.

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
AUTH_METHODS = ("client_secret_post", "client_secret_basic")


def text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, got {type(raw).__name__}")
    return raw


def name(raw: Any) -> str:
    value = text(raw).strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("must be a non-empty NATS name without spaces")
    return value


def optional_text(raw: Any) -> str | None:
    return text(raw) or None


def secret(raw: Any) -> Secret | None:
    if isinstance(raw, Secret):
        return raw if raw.reveal() else None
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, got {type(raw).__name__}")
    return Secret(raw) if raw else None


def boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def integer(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ValueError(f"must be a whole number, got {raw!r}")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"must be a whole number, got {raw!r}") from None


def _finite_number(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError(f"must be a number of seconds, got {raw!r}")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number of seconds, got {raw!r}")
    return value


def _plain(number: float) -> str:
    """A bound as the README writes it: 600, 0.5."""
    return str(int(number)) if float(number).is_integer() else str(number)


@dataclass(frozen=True)
class Seconds:
    """A duration: a finite number of seconds from 0 (above 0 when ``positive``) up to
    ``maximum``. Made by :func:`seconds`."""

    maximum: float
    positive: bool = False

    def __call__(self, raw: Any) -> float:
        value = _finite_number(raw)
        if value < 0 or (value == 0 and self.positive):
            bound = "> 0" if self.positive else ">= 0"
            raise ValueError(f"must be a number of seconds {bound}, got {raw!r}")
        if value > self.maximum:
            raise ValueError(f"must be at most {_plain(self.maximum)} seconds, got {raw!r}")
        return value


@dataclass(frozen=True)
class WholeNumber:
    """A count or a size: a whole number from ``minimum`` (None: no lower bound) up to
    ``maximum``. Made by :func:`whole_number`."""

    maximum: int
    minimum: int | None = 0

    def __call__(self, raw: Any) -> int:
        value = integer(raw)
        if self.minimum is not None and value < self.minimum:
            bound = "0 or more" if self.minimum == 0 else f"at least {self.minimum}"
            raise ValueError(f"must be {bound}, got {value}")
        if value > self.maximum:
            raise ValueError(f"must be at most {self.maximum}, got {value}")
        return value


def seconds(*, maximum: float, positive: bool = False) -> Seconds:
    """The parser of a duration setting: seconds from 0 (above 0 when ``positive``: a
    timeout or an interval, where 0 makes no sense) up to ``maximum``."""
    return Seconds(maximum=maximum, positive=positive)


def whole_number(*, maximum: int, minimum: int | None = 0) -> WholeNumber:
    """The parser of a count or size setting: a whole number from ``minimum`` (1 where 0
    makes no sense; None where a negative number means something) up to ``maximum``."""
    return WholeNumber(maximum=maximum, minimum=minimum)


def fraction(raw: Any) -> float:
    value = _finite_number(raw)
    if value < 0:
        raise ValueError(f"must be a number of seconds >= 0, got {raw!r}")
    if value >= 1:
        raise ValueError(f"must be a fraction from 0 to below 1, got {raw!r}")
    return value


def subject_prefix(raw: Any) -> str:
    value = name(raw)
    if any(not token or token in ("*", ">") for token in value.split(".")):
        raise ValueError(f"must be a subject prefix without wildcards or empty tokens, "
                         f"got {value!r}")
    return value


def reply_subjects(raw: Any) -> tuple[str, ...]:
    """Subject patterns replies may be sent to: ``<prefix>.>`` (an inbox tree) or ``>``
    (anywhere), one string separated by commas or a list."""
    items = raw if isinstance(raw, list | tuple) else text(raw).split(",")
    patterns = tuple(text(item).strip() for item in items if text(item).strip())
    if not patterns:
        raise ValueError("must name at least one subject pattern (\">\" allows any)")
    for pattern in patterns:
        if pattern != ">" and not (pattern.endswith(".>") and _plain_prefix(pattern[:-2])):
            raise ValueError(f"each pattern must be <prefix>.> or >, got {pattern!r}")
    return patterns


def _plain_prefix(value: str) -> bool:
    try:
        subject_prefix(value)
    except ValueError:
        return False
    return True


def creds_file(raw: Any) -> str | None:
    """A ``.creds`` file, read and checked now (so a bad one fails at start, exit 2)."""
    path = text(raw).strip()
    if path:
        nkey_auth.load_creds_file(path)  # NatsCredentialsError is a ValueError; no secret
    return path or None


def nkey_file(raw: Any) -> str | None:
    """A file holding a user NKey seed, read and checked now."""
    path = text(raw).strip()
    if path:
        nkey_auth.load_nkey_file(path)
    return path or None


def directory(raw: Any) -> str | None:
    path = text(raw).strip()
    if path and not os.path.isdir(path):
        raise ValueError(f"{path!r} is not a directory")
    return path or None


def optional_http_url(raw: Any) -> str | None:
    return http_url(raw) if text(raw).strip() else None


def port(raw: Any) -> int | None:
    if raw == "" or raw is None:
        return None
    value = integer(raw)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a TCP port from 0 to 65535, got {value}")
    return value


def log_level(raw: Any) -> str:
    value = text(raw).strip().lower()
    if value == "warn":
        value = "warning"
    if value not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return value


def auth_method(raw: Any) -> str:
    value = text(raw).strip()
    if value not in AUTH_METHODS:
        raise ValueError(f"must be one of {', '.join(AUTH_METHODS)}, got {raw!r}")
    return value


def http_url(raw: Any) -> str:
    value = text(raw).strip()
    parts = urlsplit(value)
    if parts.username or parts.password:  # checked first: the error must not quote them
        raise ValueError("must not carry credentials; clients authenticate per request")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    return value.rstrip("/")


def url_path(raw: Any) -> str:
    value = text(raw).strip()
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"must be a path starting with '/', got {value!r}")
    return value


def parse_nats_urls(raw: str | Sequence[str]) -> tuple[str, ...]:
    """Normalise NATS server URLs as ``nats.url`` is read: one string with URLs separated by
    commas, or a list or tuple of URLs; ``nats://`` is the default scheme and 4222 the
    default port (``host`` becomes ``nats://host:4222``).

    Credentials in a URL are refused, so that a password never sits where URLs get logged
    (use nats.username/password or token). Raises ``ValueError`` with a sentence that
    completes "invalid config nats.url: ..." and never quotes a URL holding credentials.
    """
    items = raw if isinstance(raw, list | tuple) else text(raw).split(",")
    urls = []
    for item in items:
        url = text(item).strip()
        if not url:
            continue
        if "://" not in url:
            url = "nats://" + url
        parts = urlsplit(url)
        if parts.username or parts.password:  # checked first: the error must not quote them
            raise ValueError("must not carry credentials: use nats.username/password or token")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"has a bad port in {url!r}") from None
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ValueError(f"must be nats://host:port or tls://host:port, got {url!r}")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        urls.append(f"{parts.scheme}://{host}:{port or 4222}")  # IPv6 keeps its brackets
    if not urls:
        raise ValueError("must name at least one server")
    return tuple(urls)


def bucket_name(raw: Any) -> str | None:
    name = optional_text(raw)
    if name is not None and not BUCKET_NAME.match(name):
        raise ValueError("must be letters, digits, '-' or '_' (a JetStream KV bucket name), "
                         f"got {name!r}")
    return name


def replicas(raw: Any) -> int:
    count = integer(raw)
    if count < 1:
        raise ValueError(f"must be at least 1, got {count}")
    if count > MAX_REPLICAS:
        raise ValueError(f"must be {MAX_REPLICAS} or fewer (JetStream's limit), got {count}")
    return count


BUCKET_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
MAX_REPLICAS = 5


@dataclass(frozen=True)
class Rate:
    """A rate per second: a finite number above 0, up to ``maximum``. Made by :func:`rate`."""

    maximum: float

    def __call__(self, raw: Any) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ValueError(f"must be a number per second above 0, got {raw!r}")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"must be a number per second above 0, got {raw!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"must be a finite number per second above 0, got {raw!r}")
        if value > self.maximum:
            raise ValueError(f"must be at most {_plain(self.maximum)} a second, got {raw!r}")
        return value


def rate(*, maximum: float) -> Rate:
    """The parser of a rate setting: calls a second, above 0, up to ``maximum``."""
    return Rate(maximum=maximum)

MAX_CA_FILE_BYTES = 4 * 1024 * 1024
"""A CA bundle is a few kilobytes (the system's, some hundreds); a bigger file is refused."""


def ca_file(raw: Any) -> str | None:
    """A PEM CA bundle, read and loaded as TLS will load it, now (so a missing, unreadable
    or certificate-less file fails the start, exit 2, naming the setting)."""
    path = text(raw).strip()
    if not path:
        return None
    try:
        data = read_regular_file(path, MAX_CA_FILE_BYTES, label="the CA file")
    except OSError as error:
        raise ValueError(f"cannot read the CA file {path!r}: {error.strerror}") from None
    try:
        ssl.create_default_context(cadata=data.decode("ascii"))
    except (UnicodeDecodeError, ValueError, ssl.SSLError):
        raise ValueError(f"{path!r} holds no PEM certificate TLS can load") from None
    return path

