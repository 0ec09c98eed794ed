"""Configuration: one typed object from defaults, a JSON file, environment and flags.

Sources rise in precedence in that order. Each setting is declared once, as the dataclass
field it fills::

    reconnect_wait: float = setting(
        "nats.reconnectWait", _wait_seconds, default=defaults.RECONNECT_WAIT,
        env="RECONNECT_WAIT", help="seconds between reconnect rounds")

The declaration holds the JSON key, environment variables, flag, parser, help and default;
the loader, the flag parser, :func:`describe_settings` (the README table) and the types
derive from it. Validation lives in the types: every section runs its parsers in
``__post_init__``, so a config built in code fails as one read from a file does, naming
the field (``invalid config nats.reconnectWait (from code): ...``). The loader names the
source instead (``file /app/configs/app.json``, ``env RECONNECT_WAIT``, ``flag -idp-url``).
Secret values are never shown.

To add a setting, add one ``setting(...)`` field to the section its key names (``nats.*`` in
:class:`NatsConfig`; a key without a dot in :class:`Config`), with its default in
:mod:`token_worker.defaults` (or ``None`` for "unset"), ``secret=True`` for a secret, and a
README row. A new section is a frozen dataclass deriving from ``_Section``, added to its
parent as ``field(default_factory=...)``; its JSON name is the attribute name. A rule
between fields goes in the section's ``_check``. A key in the wrong section, or a key,
variable or flag claimed twice, fails at import.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from token_worker import defaults, nats_auth
from token_worker.errors import ConfigError

T = TypeVar("T")

CODE = "code"
"""The source named by errors about values given to a config type in code."""


class Secret:
    """A secret string that never shows itself in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# --- value parsers: each takes the raw value (JSON value, string, or a value given in code)
# and returns it typed and normalised, or raises ValueError with a sentence that completes
# "invalid config X (from Y): ...". Each is idempotent: a parsed value parses to itself.

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
AUTH_METHODS = ("client_secret_post", "client_secret_basic")


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, got {type(raw).__name__}")
    return raw


def _name(raw: Any) -> str:
    value = _text(raw).strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("must be a non-empty NATS name without spaces")
    return value


def _optional_text(raw: Any) -> str | None:
    return _text(raw) or None


def _secret(raw: Any) -> Secret | None:
    if isinstance(raw, Secret):
        return raw if raw.reveal() else None
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, got {type(raw).__name__}")
    return Secret(raw) if raw else None


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def _integer(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ValueError(f"must be a whole number, got {raw!r}")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"must be a whole number, got {raw!r}") from None


def _positive_integer(raw: Any) -> int:
    value = _integer(raw)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _non_negative_integer(raw: Any) -> int:
    value = _integer(raw)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def _seconds(raw: Any, *, allow_zero: bool) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError(f"must be a number of seconds, got {raw!r}")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number of seconds, got {raw!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"must be a number of seconds {bound}, got {raw!r}")
    return value


def _wait_seconds(raw: Any) -> float:
    return _seconds(raw, allow_zero=True)


def _timeout_seconds(raw: Any) -> float:
    return _seconds(raw, allow_zero=False)


def _fraction(raw: Any) -> float:
    value = _seconds(raw, allow_zero=True)
    if value >= 1:
        raise ValueError(f"must be a fraction from 0 to below 1, got {raw!r}")
    return value


def _subject_prefix(raw: Any) -> str:
    value = _name(raw)
    if any(not token or token in ("*", ">") for token in value.split(".")):
        raise ValueError(f"must be a subject prefix without wildcards or empty tokens, "
                         f"got {value!r}")
    return value


def _creds_file(raw: Any) -> str | None:
    """A ``.creds`` file, read and checked now (so a bad one fails at start, exit 2)."""
    path = _text(raw).strip()
    if path:
        nats_auth.load_creds_file(path)  # NatsCredentialsError is a ValueError; no secret
    return path or None


def _nkey_file(raw: Any) -> str | None:
    """A file holding a user NKey seed, read and checked now."""
    path = _text(raw).strip()
    if path:
        nats_auth.load_nkey_file(path)
    return path or None


def _directory(raw: Any) -> str | None:
    path = _text(raw).strip()
    if path and not os.path.isdir(path):
        raise ValueError(f"{path!r} is not a directory")
    return path or None


def _optional_http_url(raw: Any) -> str | None:
    return _http_url(raw) if _text(raw).strip() else None


def _port(raw: Any) -> int | None:
    if raw == "" or raw is None:
        return None
    value = _integer(raw)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a TCP port from 0 to 65535, got {value}")
    return value


def _log_level(raw: Any) -> str:
    value = _text(raw).strip().lower()
    if value == "warn":
        value = "warning"
    if value not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return value


def _auth_method(raw: Any) -> str:
    value = _text(raw).strip()
    if value not in AUTH_METHODS:
        raise ValueError(f"must be one of {', '.join(AUTH_METHODS)}, got {raw!r}")
    return value


def _http_url(raw: Any) -> str:
    value = _text(raw).strip()
    parts = urlsplit(value)
    if parts.username or parts.password:  # checked first: the error must not quote them
        raise ValueError("must not carry credentials; clients authenticate per request")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    return value.rstrip("/")


def _url_path(raw: Any) -> str:
    value = _text(raw).strip()
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
    items = raw if isinstance(raw, list | tuple) else _text(raw).split(",")
    urls = []
    for item in items:
        url = _text(item).strip()
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
        urls.append(f"{parts.scheme}://{parts.hostname}:{port or 4222}")
    if not urls:
        raise ValueError("must name at least one server")
    return tuple(urls)


_nats_urls = parse_nats_urls
"""The former private name, kept while callers move to :func:`parse_nats_urls`."""


# --- one declaration per setting ----------------------------------------------------------

_SETTING = "token_worker.setting"
"""The key under which a dataclass field's metadata holds its :class:`Setting`."""


@dataclass(frozen=True)
class Setting:
    """One configurable value: its JSON key, environment variables, flag, parser and help.

    Made by :func:`setting` next to the field it fills; :data:`SETTINGS` lists them all
    with ``path`` (the attribute path in :class:`Config`) filled in.
    """

    key: str
    """Dotted JSON key, e.g. ``nats.reconnectWait``; its prefix is the section's path."""
    parse: Callable[[Any], Any]
    """Raw value (JSON value, string or value given in code) to typed value, or ValueError."""
    default: Any
    env: tuple[str, ...] = ()
    """Environment variables, the first set one wins."""
    flag: str | None = None
    """Flag name without dashes; ``-name`` and ``--name`` both work."""
    secret: bool = False
    """Never show the value, not even in an error."""
    help: str = ""
    path: tuple[str, ...] = ()
    """Attributes from :class:`Config` to the field, e.g. ``("nats", "reconnect_wait")``."""

    def read(self, value: Any, source: str) -> Any:
        """The typed value, or :class:`ConfigError` naming this setting and ``source``.

        ``None`` is accepted where the default is ``None`` (the setting is off or unset).
        """
        if value is None and self.default is None:
            return None
        try:
            return self.parse(value)
        except (TypeError, ValueError) as error:
            problem = "invalid secret value" if self.secret else str(error)
            raise ConfigError(self.key, source, problem) from None


def setting(
    key: str,
    parse: Callable[[Any], T],
    *,
    default: T,
    env: str | tuple[str, ...] = (),
    flag: str | None = None,
    secret: bool = False,
    help: str,
) -> T:
    """Declare a setting as the dataclass field it fills (see the module docstring)."""
    spec = Setting(key=key, parse=parse, default=default,
                   env=(env,) if isinstance(env, str) else env, flag=flag, secret=secret,
                   help=help)
    return field(default=default, metadata={_SETTING: spec})


_LAYOUTS: dict[type, tuple[tuple[str, Setting | type], ...]] = {}


def _layout(cls: type) -> tuple[tuple[str, Setting | type], ...]:
    """Each field of a config type with its :class:`Setting`, or the type of its section."""
    if cls not in _LAYOUTS:
        _LAYOUTS[cls] = _read_layout(cls)
    return _LAYOUTS[cls]


def _read_layout(cls: type) -> tuple[tuple[str, Setting | type], ...]:
    layout: list[tuple[str, Setting | type]] = []
    for item in fields(cls):
        spec = item.metadata.get(_SETTING)
        factory = item.default_factory
        if isinstance(spec, Setting):
            layout.append((item.name, spec))
        elif factory is not MISSING and isinstance(factory, type) and is_dataclass(factory):
            layout.append((item.name, factory))
        else:
            raise TypeError(f"{cls.__name__}.{item.name} is neither a setting(...) nor a "
                            "section (field(default_factory=SomeConfig))")
    return tuple(layout)


_SECTION_KEYS: dict[type, str] = {}
"""JSON path of each section type (``TlsConfig``: ``nats.tls``), filled from :class:`Config`."""


class _Section:
    """Base of the config types: validates every field however the object was built."""

    def __post_init__(self) -> None:
        for name, spec in _layout(type(self)):
            value = getattr(self, name)
            if isinstance(spec, Setting):
                typed = spec.read(value, CODE)
                if not (type(typed) is type(value) and typed == value):
                    object.__setattr__(self, name, typed)  # normalised, e.g. "WARN" -> "warning"
            elif not isinstance(value, spec):
                raise ConfigError(_SECTION_KEYS.get(spec, name), CODE,
                                  f"must be a {spec.__name__}, got {type(value).__name__}")
        self._check()

    def _check(self) -> None:
        """Rules between fields of this section; raise :meth:`_invalid` errors."""

    def _key(self, name: str) -> str:
        """The JSON key of this section's field ``name``."""
        spec = dict(_layout(type(self)))[name]
        return spec.key if isinstance(spec, Setting) else _SECTION_KEYS[spec]

    def _invalid(self, name: str | None, problem: str) -> ConfigError:
        """An error naming field ``name``, or the section itself for ``None``."""
        key = _SECTION_KEYS[type(self)] if name is None else self._key(name)
        return ConfigError(key, CODE, problem)


# --- the config types ------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsConfig(_Section):
    """TLS towards NATS; used when a URL has the ``tls://`` scheme."""

    ca_file: str | None = setting(
        "nats.tls.caFile", _optional_text, default=None, env="NATS_TLS_CA",
        help="CA bundle for tls:// servers")
    """CA bundle that signs the server's certificate."""
    cert_file: str | None = setting(
        "nats.tls.certFile", _optional_text, default=None, env="NATS_TLS_CERT",
        help="client certificate")
    """Client certificate, for servers that verify clients."""
    key_file: str | None = setting(
        "nats.tls.keyFile", _optional_text, default=None, env="NATS_TLS_KEY",
        help="client key")
    """Key of the client certificate."""
    verify: bool = setting(
        "nats.tls.verify", _boolean, default=defaults.NATS_TLS_VERIFY, env="NATS_TLS_VERIFY",
        help="verify the server certificate")
    """Verify the server's certificate (turn off only for local experiments)."""

    def _check(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise self._invalid(None, "certFile and keyFile go together")


@dataclass(frozen=True)
class NatsConfig(_Section):
    """How to reach NATS and how to behave when it goes away."""

    urls: tuple[str, ...] = setting(
        "nats.url", parse_nats_urls, default=(defaults.NATS_URL,), env="NATS_URL",
        flag="nats-url", help="server URL(s), comma-separated")
    """Servers; shuffled every round unless ``no_randomize`` (as nats.go does)."""
    allow_reconnect: bool = setting(
        "nats.allowReconnect", _boolean, default=defaults.ALLOW_RECONNECT,
        env="ALLOW_RECONNECT", help="reconnect after losing the server")
    max_reconnect: int = setting(
        "nats.maxReconnect", _integer, default=defaults.MAX_RECONNECT, env="MAX_RECONNECT",
        help="reconnect rounds before giving up; negative: forever")
    """Rounds over the servers before giving up; negative is forever, 0 is none."""
    reconnect_wait: float = setting(
        "nats.reconnectWait", _wait_seconds, default=defaults.RECONNECT_WAIT,
        env="RECONNECT_WAIT", help="seconds between reconnect rounds")
    connect_timeout: float = setting(
        "nats.connectTimeout", _timeout_seconds, default=defaults.CONNECT_TIMEOUT,
        env="NATS_CONNECT_TIMEOUT", help="seconds for TCP connect and handshake")
    ping_interval: float = setting(
        "nats.pingInterval", _timeout_seconds, default=defaults.PING_INTERVAL,
        env="NATS_PING_INTERVAL", help="seconds between keep-alive PINGs")
    max_pings_out: int = setting(
        "nats.maxPingsOut", _positive_integer, default=defaults.MAX_PINGS_OUT,
        env="NATS_MAX_PINGS_OUT", help="unanswered PINGs before the server is lost")
    reconnect_buffer_size: int = setting(
        "nats.reconnectBufSize", _non_negative_integer, default=defaults.RECONNECT_BUFFER_SIZE,
        env="NATS_RECONNECT_BUF_SIZE",
        help="bytes published while reconnecting, sent once back; 0: fail at once")
    """Bytes published while reconnecting that are kept for the next server; 0: none."""
    no_randomize: bool = setting(
        "nats.noRandomize", _boolean, default=defaults.NATS_NO_RANDOMIZE,
        env="NATS_NO_RANDOMIZE", help="try servers in the given order instead of shuffled")
    """Try the servers in the given order (else shuffled every round, as nats.go does)."""
    username: str | None = setting(
        "nats.username", _optional_text, default=None, env="NATS_USER", help="NATS user")
    password: Secret | None = setting(  # noqa: RUF009 - setting() returns a dataclass field
        "nats.password", _secret, default=None, env="NATS_PASS", secret=True,
        help="NATS password")
    token: Secret | None = setting(  # noqa: RUF009 - setting() returns a dataclass field
        "nats.token", _secret, default=None, env="NATS_TOKEN", secret=True,
        help="NATS auth token")
    creds_file: str | None = setting(
        "nats.credsFile", _creds_file, default=None, env="NATS_CREDS",
        help="NATS .creds file (user JWT and NKey seed), for operator-mode servers")
    """Read at every connect, so a rotated file is used on the next reconnect."""
    nkey_file: str | None = setting(
        "nats.nkeyFile", _nkey_file, default=None, env="NATS_NKEY",
        help="file holding a NATS user NKey seed (servers with nkey users)")
    tls: TlsConfig = field(default_factory=TlsConfig)

    def _check(self) -> None:
        if self.password and not self.username:
            raise self._invalid("password", f"needs {self._key('username')}")
        if self.creds_file and self.nkey_file:
            raise self._invalid("nkey_file", f"give it or {self._key('creds_file')}, not both")

    def auth(self) -> nats_auth.NatsAuth | None:
        """The NKey-based authentication these settings name (a fresh object: it reads
        its file at every connect), or None."""
        if self.creds_file:
            return nats_auth.CredsFileAuth(self.creds_file)
        if self.nkey_file:
            return nats_auth.NkeySeedFileAuth(self.nkey_file)
        return None


@dataclass(frozen=True)
class IdpConfig(_Section):
    """Where and how to ask the identity provider for tokens."""

    url: str = setting(
        "idp.url", _http_url, default=defaults.IDP_URL, env="IDP_URL", flag="idp-url",
        help="identity provider base URL")
    token_path: str = setting(
        "idp.tokenPath", _url_path, default=defaults.IDP_TOKEN_PATH, env="IDP_TOKEN_PATH",
        flag="idp-token-path", help="token endpoint path")
    timeout: float = setting(
        "idp.timeout", _timeout_seconds, default=defaults.IDP_TIMEOUT, env="IDP_TIMEOUT",
        help="seconds one IdP attempt may take: connect, headers and body")
    auth_method: str = setting(
        "idp.authMethod", _auth_method, default=defaults.IDP_AUTH_METHOD,
        env="IDP_AUTH_METHOD", help="client_secret_post or client_secret_basic")
    default_scope: str = setting(
        "idp.defaultScope", _text, default=defaults.IDP_DEFAULT_SCOPE,
        env="IDP_DEFAULT_SCOPE", help="scope asked for when a request names none")
    issuer: str | None = setting(
        "idp.issuer", _optional_http_url, default=None, env="IDP_ISSUER", flag="idp-issuer",
        help="issuer URL: token endpoint from OIDC discovery (instead of url + tokenPath)")
    """With an issuer, the token endpoint is read from its OIDC discovery document."""
    deadline: float = setting(
        "idp.deadline", _timeout_seconds, default=defaults.IDP_DEADLINE, env="IDP_DEADLINE",
        help="seconds one token fetch may take, retries included")
    failure_threshold: int = setting(
        "idp.failureThreshold", _positive_integer, default=defaults.IDP_FAILURE_THRESHOLD,
        env="IDP_FAILURE_THRESHOLD", help="consecutive IdP failures before failing fast")
    cool_down: float = setting(
        "idp.coolDown", _timeout_seconds, default=defaults.IDP_COOL_DOWN, env="IDP_COOL_DOWN",
        help="seconds of failing fast before the IdP is tried again")
    default_expires_in: int = setting(
        "idp.defaultExpiresIn", _non_negative_integer, default=defaults.IDP_DEFAULT_EXPIRES_IN,
        env="IDP_DEFAULT_EXPIRES_IN",
        help="seconds of life of a token whose answer has no expires_in")
    """Seconds of life of a token whose answer has no ``expires_in`` (RFC 6749 5.1)."""
    max_response_bytes: int = setting(
        "idp.maxResponseBytes", _positive_integer, default=defaults.IDP_MAX_RESPONSE_BYTES,
        env="IDP_MAX_RESPONSE_BYTES",
        help="largest token endpoint answer read, bytes; a larger one is refused")

    @property
    def token_url(self) -> str:
        """The token endpoint: base URL + token path."""
        return self.url.rstrip("/") + "/" + self.token_path.lstrip("/")


def _bucket_name(raw: Any) -> str | None:
    name = _optional_text(raw)
    if name is not None and not _BUCKET_RE.match(name):
        raise ValueError("must be letters, digits, '-' or '_' (a JetStream KV bucket name), "
                         f"got {name!r}")
    return name


def _replicas(raw: Any) -> int:
    count = _positive_integer(raw)
    if count > MAX_REPLICAS:
        raise ValueError(f"must be {MAX_REPLICAS} or fewer (JetStream's limit), got {count}")
    return count


_BUCKET_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
MAX_REPLICAS = 5


@dataclass(frozen=True)
class SharedCacheConfig(_Section):
    """The shared token tier: a JetStream KV bucket every replica reads (off without a
    bucket). Its max age is ``cache.maxTtl``: no token is kept longer than that anyway."""

    bucket: str | None = setting(
        "cache.shared.bucket", _bucket_name, default=None, env="CACHE_SHARED_BUCKET",
        help="JetStream KV bucket shared by the fleet (created when missing); off when unset")
    key_file: str | None = setting(
        "cache.shared.keyFile", _optional_text, default=None, env="CACHE_SHARED_KEY_FILE",
        help="file of at least 32 secret bytes sealing the bucket's values (a mounted Secret)")
    previous_key_file: str | None = setting(
        "cache.shared.previousKeyFile", _optional_text, default=None,
        env="CACHE_SHARED_PREVIOUS_KEY_FILE",
        help="the key file before a rotation: its values are still read and re-sealed")
    replicas: int = setting(
        "cache.shared.replicas", _replicas, default=defaults.CACHE_SHARED_REPLICAS,
        env="CACHE_SHARED_REPLICAS", help="copies of the bucket kept by clustered JetStream")

    def _check(self) -> None:
        if self.bucket is None:
            return
        if not self.key_file:
            raise self._invalid("bucket", f"needs {self._key('key_file')}")
        # Read now, so a missing or short key fails the start, naming the setting (never
        # the bytes). Imported here: the shared tier's modules import this one.
        from token_worker.shared_cache import load_key_file  # noqa: PLC0415

        for name in ("key_file", "previous_key_file"):
            path = getattr(self, name)
            if path:
                try:
                    load_key_file(path)
                except ConfigError as error:
                    raise self._invalid(name, error.problem) from None


@dataclass(frozen=True)
class CacheConfig(_Section):
    """The per-worker token cache."""

    enabled: bool = setting(
        "cache.enabled", _boolean, default=defaults.CACHE_ENABLED, env="CACHE_ENABLED",
        help="serve repeated requests from the token cache")
    max_entries: int = setting(
        "cache.maxEntries", _positive_integer, default=defaults.CACHE_MAX_ENTRIES,
        env="CACHE_MAX_ENTRIES", help="tokens kept (LRU)")
    expiry_margin: float = setting(
        "cache.expiryMargin", _wait_seconds, default=defaults.CACHE_EXPIRY_MARGIN,
        env="CACHE_EXPIRY_MARGIN",
        help="seconds of life a cached token must have left to be served")
    refresh_ahead: float = setting(
        "cache.refreshAhead", _fraction, default=defaults.CACHE_REFRESH_AHEAD,
        env="CACHE_REFRESH_AHEAD",
        help="last share of a token's servable life in which it is refreshed in the background")
    max_ttl: float = setting(
        "cache.maxTtl", _timeout_seconds, default=defaults.CACHE_MAX_TTL, env="CACHE_MAX_TTL",
        help="longest life in seconds a cached token is given (and replies say)")
    shared: SharedCacheConfig = field(default_factory=SharedCacheConfig)


@dataclass(frozen=True)
class HealthConfig(_Section):
    """The optional HTTP listener for probes and metrics."""

    port: int | None = setting(
        "health.port", _port, default=None, env="HEALTH_PORT", flag="health-port",
        help="port of /healthz, /readyz and /metrics (off when unset; 0: any free port)")
    """``None``: off (the library's default; the image turns it on); 0: any free port."""
    host: str = setting(
        "health.host", _text, default=defaults.HEALTH_HOST, env="HEALTH_HOST",
        help="address the health listener binds")
    """Address to listen on."""


@dataclass(frozen=True)
class CredentialsConfig(_Section):
    """Named credentials: client ids and secrets the worker holds, so none rides the bus."""

    directory: str | None = setting(
        "credentials.dir", _directory, default=None, env="CREDENTIALS_DIR",
        flag="credentials-dir",
        help="folder of named credentials (<name>/client_id, <name>/client_secret)")
    """Mounted from a Kubernetes Secret; without it the named subjects are not subscribed."""
    inline: bool = setting(
        "credentials.inline", _boolean, default=defaults.INLINE_SECRETS, env="INLINE_SECRETS",
        help="serve requests that carry their own client_secret")
    """False: a request carrying ``client_secret`` gets ``inline_secrets_disabled``."""


@dataclass(frozen=True)
class Config(_Section):
    """Everything a :class:`~token_worker.TokenWorker` needs."""

    environment: str = setting(
        "environment", _text, default=defaults.ENVIRONMENT, env="APP_ENV", flag="env",
        help="deployment environment, logged with every line")
    log_level: str = setting(
        "logLevel", _log_level, default=defaults.LOG_LEVEL, env=("LOG_LEVEL", "APP_LOG_LEVEL"),
        flag="log-level", help="debug, info, warning, error")
    name_suffix: str | None = setting(
        "nameSuffix", _optional_text, default=None, env="WORKER_NAME_SUFFIX",
        flag="name-suffix", help="client name suffix (else POD_NAME, else host name)")
    """Client name suffix; ``None`` falls back to WORKER_NAME_SUFFIX, POD_NAME, host name."""
    subject: str = setting(
        "subject", _name, default=defaults.SUBJECT, env="TOKEN_SUBJECT", flag="subject",
        help="request subject")
    queue: str = setting(
        "queue", _name, default=defaults.QUEUE_GROUP, env="QUEUE_GROUP", flag="queue",
        help="queue group")
    named_subject: str = setting(
        "namedSubject", _subject_prefix, default=defaults.NAMED_SUBJECT, env="NAMED_SUBJECT",
        help="prefix of named-credential subjects (<prefix>.<credential>)")
    workers: int = setting(
        "workers", _positive_integer, default=defaults.WORKERS, env="WORKERS", flag="workers",
        help="requests served at once")
    backlog: int = setting(
        "backlog", _non_negative_integer, default=defaults.BACKLOG, env="BACKLOG",
        help="requests that may wait for a thread before 'overloaded'")
    max_payload: int = setting(
        "maxPayload", _positive_integer, default=defaults.MAX_PAYLOAD, env="MAX_PAYLOAD",
        help="largest request accepted, bytes")
    drain_timeout: float = setting(
        "drainTimeout", _wait_seconds, default=defaults.DRAIN_TIMEOUT, env="DRAIN_TIMEOUT",
        help="seconds a stop waits for in-flight requests")
    nats: NatsConfig = field(default_factory=NatsConfig)
    idp: IdpConfig = field(default_factory=IdpConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    credentials: CredentialsConfig = field(default_factory=CredentialsConfig)


# --- the settings, derived from the types ----------------------------------------------------


def _collect(cls: type, path: tuple[str, ...], prefix: str) -> Iterator[Setting]:
    """Every setting under ``cls``, in field order, with its path filled in."""
    for name, spec in _layout(cls):
        if isinstance(spec, Setting):
            if spec.key.rpartition(".")[0] != prefix:
                raise TypeError(f"setting {spec.key!r} is declared in {cls.__name__}, whose "
                                f"keys start with {prefix + '.' if prefix else 'no section'}")
            yield replace(spec, path=(*path, name))
        else:
            section_key = f"{prefix}.{name}" if prefix else name
            _SECTION_KEYS[spec] = section_key
            yield from _collect(spec, (*path, name), section_key)


def _declared_once(settings: tuple[Setting, ...]) -> tuple[Setting, ...]:
    """Refuse a key, environment variable or flag that two settings claim."""
    names = [s.key for s in settings] + [v for s in settings for v in s.env]
    names += [f"-{s.flag}" for s in settings if s.flag]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise TypeError(f"declared by more than one setting: {', '.join(twice)}")
    return settings


SETTINGS: tuple[Setting, ...] = _declared_once(tuple(_collect(Config, (), "")))
"""Every setting, in the order of the fields of :class:`Config`."""

_BY_KEY = {setting.key: setting for setting in SETTINGS}
_SECTIONS = set(_SECTION_KEYS.values())


# --- the loader --------------------------------------------------------------------------------


def load_config(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the :class:`Config` from defaults < file < environment < flags.

    ``argv`` are command-line arguments without the program name (``[]`` for none, so that a
    library caller never reads ``sys.argv`` by accident); ``environ`` defaults to
    ``os.environ``. Raises :class:`ConfigError` for any bad value.
    """
    env = os.environ if environ is None else environ
    flags = parse_flags([] if argv is None else list(argv))
    raw: dict[str, tuple[Any, str]] = {}
    config_path = flags.pop("config", None)
    if config_path:
        raw.update(_read_file(config_path))
    raw.update(_read_env(env))
    raw.update(_read_flags(flags))
    return _build(raw)


def parse_flags(argv: list[str]) -> dict[str, Any]:
    """Parse the command line; every flag is accepted with one or two dashes."""
    parser = build_flag_parser()
    parsed = vars(parser.parse_args(argv))
    return {name: value for name, value in parsed.items() if value is not None}


def build_flag_parser() -> argparse.ArgumentParser:
    """The flag parser; ``-queue`` and ``--queue`` are the same flag, as in Go's flag package."""
    parser = argparse.ArgumentParser(
        prog="token-worker",
        description="Serve OAuth2 client-credentials tokens over NATS request-reply.",
        allow_abbrev=False,
    )
    parser.add_argument("-config", "--config", metavar="PATH", help="JSON config file")
    for setting_ in SETTINGS:
        if setting_.flag:
            parser.add_argument(
                f"-{setting_.flag}", f"--{setting_.flag}", dest=setting_.flag,
                help=setting_.help,
            )
    return parser


def _read_file(path: str) -> dict[str, tuple[Any, str]]:
    source = f"file {path}"
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except OSError as error:
        raise ConfigError("config", f"flag -config {path}",
                          f"cannot read: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError("config", source, f"not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError("config", source, "must be a JSON object")
    found: dict[str, tuple[Any, str]] = {}
    _flatten(document, "", source, found)
    return found


def _flatten(node: dict[str, Any], prefix: str, source: str, found: dict[str, Any]) -> None:
    for name, value in node.items():
        key = prefix + name
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(key, source, "must be a JSON object")
            _flatten(value, key + ".", source, found)
        elif key in _BY_KEY:
            if value is not None:
                found[key] = (value, source)
        else:
            raise ConfigError(key, source, "unknown key (a typo?)")


def _read_env(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    found: dict[str, tuple[Any, str]] = {}
    for setting_ in SETTINGS:
        # Earlier names win: LOG_LEVEL over APP_LOG_LEVEL.
        for variable in reversed(setting_.env):
            if env.get(variable):
                found[setting_.key] = (env[variable], f"env {variable}")
    return found


def _read_flags(flags: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    return {
        setting_.key: (flags[setting_.flag], f"flag -{setting_.flag}")
        for setting_ in SETTINGS
        if setting_.flag and setting_.flag in flags
    }


def _build(raw: Mapping[str, tuple[Any, str]]) -> Config:
    """Parse each value naming its source, then build the types (which check it all again,
    cheaply: a parsed value parses to itself); a rule between fields names the source of the
    field it blames."""
    values = {}
    for key, (value, source) in raw.items():
        setting_ = _BY_KEY[key]
        values[setting_.path] = setting_.read(value, source)
    try:
        return _construct(Config, (), values)
    except ConfigError as error:
        if error.source != CODE:
            raise
        raise ConfigError(error.field, _source_of(error.field, raw), error.problem) from None


def _construct(cls: type[T], path: tuple[str, ...], values: Mapping[tuple[str, ...], Any]) -> T:
    """An instance of ``cls`` with the parsed values under ``path`` (defaults elsewhere)."""
    kwargs: dict[str, Any] = {}
    for name, spec in _layout(cls):
        where = (*path, name)
        if isinstance(spec, Setting):
            if where in values:
                kwargs[name] = values[where]
        else:
            kwargs[name] = _construct(spec, where, values)
    return cls(**kwargs)


def _source_of(key: str, raw: Mapping[str, tuple[Any, str]]) -> str:
    """Where the value of ``key`` (or of a setting in section ``key``) came from."""
    if key in raw:
        return raw[key][1]
    inside = [source for name, (_, source) in raw.items() if name.startswith(key + ".")]
    return inside[-1] if inside else "config"


def describe_settings() -> list[dict[str, str]]:
    """The settings as rows (key, env, flag, default), for documentation and ``--help``."""
    return [
        {
            "key": setting_.key,
            "env": ", ".join(setting_.env),
            "flag": f"-{setting_.flag}" if setting_.flag else "",
            "default": "" if setting_.default is None else str(setting_.default),
            "help": setting_.help,
        }
        for setting_ in SETTINGS
    ]
