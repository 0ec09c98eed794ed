"""Configuration: one typed object from defaults, a JSON file, environment and flags.

Sources rise in precedence in that order. Every setting is declared once in ``SETTINGS``
with its JSON key, environment variables and flag, so the loader, the error messages and
the README table cannot drift apart. A bad value raises :class:`ConfigError` naming the
field and its source (``file /app/configs/app.json``, ``env RECONNECT_WAIT``, ``flag
-idp-url``); secret values are never shown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from token_worker import defaults
from token_worker.errors import ConfigError


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


@dataclass(frozen=True)
class TlsConfig:
    """TLS towards NATS; used when a URL has the ``tls://`` scheme."""

    ca_file: str | None = None
    """CA bundle that signs the server's certificate."""
    cert_file: str | None = None
    """Client certificate, for servers that verify clients."""
    key_file: str | None = None
    """Key of the client certificate."""
    verify: bool = True
    """Verify the server's certificate (turn off only for local experiments)."""


@dataclass(frozen=True)
class NatsConfig:
    """How to reach NATS and how to behave when it goes away."""

    urls: tuple[str, ...] = (defaults.NATS_URL,)
    """Servers, tried in turn."""
    allow_reconnect: bool = defaults.ALLOW_RECONNECT
    max_reconnect: int = defaults.MAX_RECONNECT
    """Rounds over the servers before giving up; negative is forever, 0 is none."""
    reconnect_wait: float = defaults.RECONNECT_WAIT
    connect_timeout: float = defaults.CONNECT_TIMEOUT
    ping_interval: float = defaults.PING_INTERVAL
    max_pings_out: int = defaults.MAX_PINGS_OUT
    reconnect_buffer_size: int = defaults.RECONNECT_BUFFER_SIZE
    """Bytes published while reconnecting that are kept for the next server; 0: none."""
    username: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class IdpConfig:
    """Where and how to ask the identity provider for tokens."""

    url: str = defaults.IDP_URL
    token_path: str = defaults.IDP_TOKEN_PATH
    timeout: float = defaults.IDP_TIMEOUT
    auth_method: str = defaults.IDP_AUTH_METHOD
    default_scope: str = defaults.IDP_DEFAULT_SCOPE
    issuer: str | None = None
    """With an issuer, the token endpoint is read from its OIDC discovery document."""
    deadline: float = defaults.IDP_DEADLINE
    failure_threshold: int = defaults.IDP_FAILURE_THRESHOLD
    cool_down: float = defaults.IDP_COOL_DOWN

    @property
    def token_url(self) -> str:
        """The token endpoint: base URL + token path."""
        return self.url.rstrip("/") + "/" + self.token_path.lstrip("/")


@dataclass(frozen=True)
class CacheConfig:
    """The per-worker token cache."""

    enabled: bool = defaults.CACHE_ENABLED
    max_entries: int = defaults.CACHE_MAX_ENTRIES
    expiry_margin: float = defaults.CACHE_EXPIRY_MARGIN
    refresh_ahead: float = defaults.CACHE_REFRESH_AHEAD


@dataclass(frozen=True)
class HealthConfig:
    """The optional HTTP listener for probes and metrics."""

    port: int | None = None
    """``None``: off (the library's default; the image turns it on); 0: any free port."""
    host: str = "0.0.0.0"  # noqa: S104 - kubelet and Prometheus reach the pod's address
    """Address to listen on."""


@dataclass(frozen=True)
class Config:
    """Everything a :class:`~token_worker.TokenWorker` needs."""

    environment: str = defaults.ENVIRONMENT
    log_level: str = defaults.LOG_LEVEL
    name_suffix: str | None = None
    """Client name suffix; ``None`` falls back to WORKER_NAME_SUFFIX, POD_NAME, host name."""
    subject: str = defaults.SUBJECT
    queue: str = defaults.QUEUE_GROUP
    workers: int = defaults.WORKERS
    backlog: int = defaults.BACKLOG
    max_payload: int = defaults.MAX_PAYLOAD
    drain_timeout: float = defaults.DRAIN_TIMEOUT
    nats: NatsConfig = field(default_factory=NatsConfig)
    idp: IdpConfig = field(default_factory=IdpConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    health: HealthConfig = field(default_factory=HealthConfig)


# --- value parsers: each takes the raw value (JSON value or string) and returns it typed, or
# raises ValueError with a sentence that completes "invalid config X (from Y): ..."

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
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials; clients authenticate per request")
    return value.rstrip("/")


def _url_path(raw: Any) -> str:
    value = _text(raw).strip()
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"must be a path starting with '/', got {value!r}")
    return value


def _nats_urls(raw: Any) -> tuple[str, ...]:
    """Parse one URL or several separated by commas; credentials in a URL are refused, so
    that a password never sits where URLs get logged (use nats.username/password)."""
    items = raw if isinstance(raw, list) else _text(raw).split(",")
    urls = []
    for item in items:
        url = _text(item).strip()
        if not url:
            continue
        if "://" not in url:
            url = "nats://" + url
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"has a bad port in {url!r}") from None
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ValueError(f"must be nats://host:port or tls://host:port, got {url!r}")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials: use nats.username/password or token")
        urls.append(f"{parts.scheme}://{parts.hostname}:{port or 4222}")
    if not urls:
        raise ValueError("must name at least one server")
    return tuple(urls)


@dataclass(frozen=True)
class Setting:
    """One configurable value: where it lives in the JSON file, env and flags."""

    key: str
    """Dotted JSON key, e.g. ``nats.reconnectWait``."""
    target: str
    """Dotted attribute of :class:`Config`, e.g. ``nats.reconnect_wait``."""
    parse: Callable[[Any], Any]
    env: tuple[str, ...] = ()
    flag: str | None = None
    secret: bool = False
    help: str = ""


SETTINGS: tuple[Setting, ...] = (
    Setting("environment", "environment", _text, ("APP_ENV",), "env",
            help="deployment environment, logged with every line"),
    Setting("logLevel", "log_level", _log_level, ("LOG_LEVEL", "APP_LOG_LEVEL"), "log-level",
            help="debug, info, warning, error"),
    Setting("nameSuffix", "name_suffix", _optional_text, ("WORKER_NAME_SUFFIX",), "name-suffix",
            help="client name suffix (else POD_NAME, else host name)"),
    Setting("subject", "subject", _name, ("TOKEN_SUBJECT",), "subject",
            help="request subject"),
    Setting("queue", "queue", _name, ("QUEUE_GROUP",), "queue", help="queue group"),
    Setting("workers", "workers", _positive_integer, ("WORKERS",), "workers",
            help="requests served at once"),
    Setting("backlog", "backlog", _non_negative_integer, ("BACKLOG",), None,
            help="requests that may wait for a thread before 'overloaded'"),
    Setting("maxPayload", "max_payload", _positive_integer, ("MAX_PAYLOAD",), None,
            help="largest request accepted, bytes"),
    Setting("drainTimeout", "drain_timeout", _wait_seconds, ("DRAIN_TIMEOUT",), None,
            help="seconds a stop waits for in-flight requests"),
    Setting("nats.url", "nats.urls", _nats_urls, ("NATS_URL",), "nats-url",
            help="server URL(s), comma-separated"),
    Setting("nats.allowReconnect", "nats.allow_reconnect", _boolean, ("ALLOW_RECONNECT",),
            None, help="reconnect after losing the server"),
    Setting("nats.maxReconnect", "nats.max_reconnect", _integer, ("MAX_RECONNECT",), None,
            help="reconnect rounds before giving up; negative: forever"),
    Setting("nats.reconnectWait", "nats.reconnect_wait", _wait_seconds, ("RECONNECT_WAIT",),
            None, help="seconds between reconnect rounds"),
    Setting("nats.connectTimeout", "nats.connect_timeout", _timeout_seconds,
            ("NATS_CONNECT_TIMEOUT",), None, help="seconds for TCP connect and handshake"),
    Setting("nats.pingInterval", "nats.ping_interval", _timeout_seconds,
            ("NATS_PING_INTERVAL",), None, help="seconds between keep-alive PINGs"),
    Setting("nats.maxPingsOut", "nats.max_pings_out", _positive_integer,
            ("NATS_MAX_PINGS_OUT",), None, help="unanswered PINGs before the server is lost"),
    Setting("nats.reconnectBufSize", "nats.reconnect_buffer_size", _non_negative_integer,
            ("NATS_RECONNECT_BUF_SIZE",), None,
            help="bytes published while reconnecting, sent once back; 0: fail at once"),
    Setting("nats.username", "nats.username", _optional_text, ("NATS_USER",), None,
            help="NATS user"),
    Setting("nats.password", "nats.password", _secret, ("NATS_PASS",), None, secret=True,
            help="NATS password"),
    Setting("nats.token", "nats.token", _secret, ("NATS_TOKEN",), None, secret=True,
            help="NATS auth token"),
    Setting("nats.tls.caFile", "nats.tls.ca_file", _optional_text, ("NATS_TLS_CA",), None,
            help="CA bundle for tls:// servers"),
    Setting("nats.tls.certFile", "nats.tls.cert_file", _optional_text, ("NATS_TLS_CERT",),
            None, help="client certificate"),
    Setting("nats.tls.keyFile", "nats.tls.key_file", _optional_text, ("NATS_TLS_KEY",), None,
            help="client key"),
    Setting("nats.tls.verify", "nats.tls.verify", _boolean, ("NATS_TLS_VERIFY",), None,
            help="verify the server certificate"),
    Setting("idp.url", "idp.url", _http_url, ("IDP_URL",), "idp-url",
            help="identity provider base URL"),
    Setting("idp.tokenPath", "idp.token_path", _url_path, ("IDP_TOKEN_PATH",),
            "idp-token-path", help="token endpoint path"),
    Setting("idp.timeout", "idp.timeout", _timeout_seconds, ("IDP_TIMEOUT",), None,
            help="seconds to wait for the IdP"),
    Setting("idp.authMethod", "idp.auth_method", _auth_method, ("IDP_AUTH_METHOD",), None,
            help="client_secret_post or client_secret_basic"),
    Setting("idp.defaultScope", "idp.default_scope", _text, ("IDP_DEFAULT_SCOPE",), None,
            help="scope asked for when a request names none"),
    Setting("idp.issuer", "idp.issuer", _optional_http_url, ("IDP_ISSUER",), "idp-issuer",
            help="issuer URL: token endpoint from OIDC discovery (instead of url + tokenPath)"),
    Setting("idp.deadline", "idp.deadline", _timeout_seconds, ("IDP_DEADLINE",), None,
            help="seconds one token fetch may take, retries included"),
    Setting("idp.failureThreshold", "idp.failure_threshold", _positive_integer,
            ("IDP_FAILURE_THRESHOLD",), None,
            help="consecutive IdP failures before failing fast"),
    Setting("idp.coolDown", "idp.cool_down", _timeout_seconds, ("IDP_COOL_DOWN",), None,
            help="seconds of failing fast before the IdP is tried again"),
    Setting("health.port", "health.port", _port, ("HEALTH_PORT",), "health-port",
            help="port of /healthz, /readyz and /metrics (off when unset; 0: any free port)"),
    Setting("health.host", "health.host", _text, ("HEALTH_HOST",), None,
            help="address the health listener binds"),
    Setting("cache.enabled", "cache.enabled", _boolean, ("CACHE_ENABLED",), None,
            help="serve repeated requests from the token cache"),
    Setting("cache.maxEntries", "cache.max_entries", _positive_integer,
            ("CACHE_MAX_ENTRIES",), None, help="tokens kept (LRU)"),
    Setting("cache.expiryMargin", "cache.expiry_margin", _wait_seconds,
            ("CACHE_EXPIRY_MARGIN",), None,
            help="seconds of life a cached token must have left to be served"),
    Setting("cache.refreshAhead", "cache.refresh_ahead", _fraction, ("CACHE_REFRESH_AHEAD",),
            None, help="last share of a token's life in which it is refreshed in the background"),
)

_BY_KEY = {setting.key: setting for setting in SETTINGS}
_SECTIONS = {key.rsplit(".", 1)[0] for key in _BY_KEY if "." in key}


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
    for setting in SETTINGS:
        if setting.flag:
            parser.add_argument(
                f"-{setting.flag}", f"--{setting.flag}", dest=setting.flag, help=setting.help
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
    for setting in SETTINGS:
        # Earlier names win: LOG_LEVEL over APP_LOG_LEVEL.
        for variable in reversed(setting.env):
            if env.get(variable):
                found[setting.key] = (env[variable], f"env {variable}")
    return found


def _read_flags(flags: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    return {
        setting.key: (flags[setting.flag], f"flag -{setting.flag}")
        for setting in SETTINGS
        if setting.flag and setting.flag in flags
    }


def _build(raw: Mapping[str, tuple[Any, str]]) -> Config:
    config = Config()
    for key, (value, source) in raw.items():
        setting = _BY_KEY[key]
        try:
            typed = setting.parse(value)
        except ValueError as error:
            problem = "invalid secret value" if setting.secret else str(error)
            raise ConfigError(key, source, problem) from None
        config = _set(config, setting.target.split("."), typed)
    _check_consistency(config)
    return config


def _set(node: Any, path: list[str], value: Any) -> Any:
    if len(path) == 1:
        return replace(node, **{path[0]: value})
    child = getattr(node, path[0])
    return replace(node, **{path[0]: _set(child, path[1:], value)})


def _check_consistency(config: Config) -> None:
    tls = config.nats.tls
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("nats.tls", "config", "certFile and keyFile go together")
    if config.nats.password and not config.nats.username:
        raise ConfigError("nats.password", "config", "needs nats.username")


def describe_settings() -> list[dict[str, str]]:
    """The settings as rows (key, env, flag, default), for documentation and ``--help``."""
    rows = []
    base = Config()
    for setting in SETTINGS:
        default: Any = base
        for part in setting.target.split("."):
            default = getattr(default, part)
        rows.append(
            {
                "key": setting.key,
                "env": ", ".join(setting.env),
                "flag": f"-{setting.flag}" if setting.flag else "",
                "default": "" if default is None else str(default),
                "help": setting.help,
            }
        )
    return rows



parse_nats_urls = _nats_urls
"""Public name of the NATS URL parser, for TokenClient (same normalisation as the worker)."""
