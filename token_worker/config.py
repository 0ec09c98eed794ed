"""Configuration: one typed object from defaults, a JSON file, environment and flags.

Sources rise in precedence in that order. Each setting is declared once, as the dataclass
field it fills::

    reconnect_wait: float = setting(
        "nats.reconnectWait", values.wait_seconds, default=defaults.RECONNECT_WAIT,
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
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any, TypeVar

from token_worker import defaults, nats_auth, values
from token_worker.errors import ConfigError
from token_worker.values import Secret, parse_nats_urls

__all__ = [
    "CODE", "SETTINGS", "CacheConfig", "Config", "CredentialsConfig", "HealthConfig",
    "IdpConfig", "NatsConfig", "Secret", "Setting", "SharedCacheConfig", "TlsConfig",
    "build_flag_parser", "describe_settings", "load_config", "parse_flags",
    "parse_nats_urls", "setting",
]

T = TypeVar("T")

CODE = "code"
"""The source named by errors about values given to a config type in code."""


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
        "nats.tls.caFile", values.optional_text, default=None, env="NATS_TLS_CA",
        help="CA bundle for tls:// servers")
    """CA bundle that signs the server's certificate."""
    cert_file: str | None = setting(
        "nats.tls.certFile", values.optional_text, default=None, env="NATS_TLS_CERT",
        help="client certificate")
    """Client certificate, for servers that verify clients."""
    key_file: str | None = setting(
        "nats.tls.keyFile", values.optional_text, default=None, env="NATS_TLS_KEY",
        help="client key")
    """Key of the client certificate."""
    verify: bool = setting(
        "nats.tls.verify", values.boolean, default=defaults.NATS_TLS_VERIFY, env="NATS_TLS_VERIFY",
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
        "nats.allowReconnect", values.boolean, default=defaults.ALLOW_RECONNECT,
        env="ALLOW_RECONNECT", help="reconnect after losing the server")
    max_reconnect: int = setting(
        "nats.maxReconnect", values.integer, default=defaults.MAX_RECONNECT, env="MAX_RECONNECT",
        help="reconnect rounds before giving up; negative: forever")
    """Rounds over the servers before giving up; negative is forever, 0 is none."""
    reconnect_wait: float = setting(
        "nats.reconnectWait", values.wait_seconds, default=defaults.RECONNECT_WAIT,
        env="RECONNECT_WAIT", help="seconds between reconnect rounds")
    connect_timeout: float = setting(
        "nats.connectTimeout", values.timeout_seconds, default=defaults.CONNECT_TIMEOUT,
        env="NATS_CONNECT_TIMEOUT", help="seconds for TCP connect and handshake")
    ping_interval: float = setting(
        "nats.pingInterval", values.timeout_seconds, default=defaults.PING_INTERVAL,
        env="NATS_PING_INTERVAL", help="seconds between keep-alive PINGs")
    max_pings_out: int = setting(
        "nats.maxPingsOut", values.positive_integer, default=defaults.MAX_PINGS_OUT,
        env="NATS_MAX_PINGS_OUT", help="unanswered PINGs before the server is lost")
    reconnect_buffer_size: int = setting(
        "nats.reconnectBufSize", values.non_negative_integer,
        default=defaults.RECONNECT_BUFFER_SIZE, env="NATS_RECONNECT_BUF_SIZE",
        help="bytes published while reconnecting, sent once back; 0: fail at once")
    """Bytes published while reconnecting that are kept for the next server; 0: none."""
    no_randomize: bool = setting(
        "nats.noRandomize", values.boolean, default=defaults.NATS_NO_RANDOMIZE,
        env="NATS_NO_RANDOMIZE", help="try servers in the given order instead of shuffled")
    """Try the servers in the given order (else shuffled every round, as nats.go does)."""
    username: str | None = setting(
        "nats.username", values.optional_text, default=None, env="NATS_USER", help="NATS user")
    password: Secret | None = setting(  # noqa: RUF009 - setting() returns a dataclass field
        "nats.password", values.secret, default=None, env="NATS_PASS", secret=True,
        help="NATS password")
    token: Secret | None = setting(  # noqa: RUF009 - setting() returns a dataclass field
        "nats.token", values.secret, default=None, env="NATS_TOKEN", secret=True,
        help="NATS auth token")
    creds_file: str | None = setting(
        "nats.credsFile", values.creds_file, default=None, env="NATS_CREDS",
        help="NATS .creds file (user JWT and NKey seed), for operator-mode servers")
    """Read at every connect, so a rotated file is used on the next reconnect."""
    nkey_file: str | None = setting(
        "nats.nkeyFile", values.nkey_file, default=None, env="NATS_NKEY",
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
        "idp.url", values.http_url, default=defaults.IDP_URL, env="IDP_URL", flag="idp-url",
        help="identity provider base URL")
    token_path: str = setting(
        "idp.tokenPath", values.url_path, default=defaults.IDP_TOKEN_PATH, env="IDP_TOKEN_PATH",
        flag="idp-token-path", help="token endpoint path")
    timeout: float = setting(
        "idp.timeout", values.timeout_seconds, default=defaults.IDP_TIMEOUT, env="IDP_TIMEOUT",
        help="seconds one IdP attempt may take: connect, headers and body")
    auth_method: str = setting(
        "idp.authMethod", values.auth_method, default=defaults.IDP_AUTH_METHOD,
        env="IDP_AUTH_METHOD", help="client_secret_post or client_secret_basic")
    default_scope: str = setting(
        "idp.defaultScope", values.text, default=defaults.IDP_DEFAULT_SCOPE,
        env="IDP_DEFAULT_SCOPE", help="scope asked for when a request names none")
    issuer: str | None = setting(
        "idp.issuer", values.optional_http_url, default=None, env="IDP_ISSUER", flag="idp-issuer",
        help="issuer URL: token endpoint from OIDC discovery (instead of url + tokenPath)")
    """With an issuer, the token endpoint is read from its OIDC discovery document."""
    deadline: float = setting(
        "idp.deadline", values.timeout_seconds, default=defaults.IDP_DEADLINE, env="IDP_DEADLINE",
        help="seconds one token fetch may take, retries included")
    failure_threshold: int = setting(
        "idp.failureThreshold", values.positive_integer, default=defaults.IDP_FAILURE_THRESHOLD,
        env="IDP_FAILURE_THRESHOLD", help="consecutive IdP failures before failing fast")
    cool_down: float = setting(
        "idp.coolDown", values.timeout_seconds, default=defaults.IDP_COOL_DOWN, env="IDP_COOL_DOWN",
        help="seconds of failing fast before the IdP is tried again")
    default_expires_in: int = setting(
        "idp.defaultExpiresIn", values.non_negative_integer,
        default=defaults.IDP_DEFAULT_EXPIRES_IN, env="IDP_DEFAULT_EXPIRES_IN",
        help="seconds of life of a token whose answer has no expires_in")
    """Seconds of life of a token whose answer has no ``expires_in`` (RFC 6749 5.1)."""
    max_response_bytes: int = setting(
        "idp.maxResponseBytes", values.positive_integer, default=defaults.IDP_MAX_RESPONSE_BYTES,
        env="IDP_MAX_RESPONSE_BYTES",
        help="largest token endpoint answer read, bytes; a larger one is refused")

    @property
    def token_url(self) -> str:
        """The token endpoint: base URL + token path."""
        return self.url.rstrip("/") + "/" + self.token_path.lstrip("/")




@dataclass(frozen=True)
class SharedCacheConfig(_Section):
    """The shared token tier: a JetStream KV bucket every replica reads (off without a
    bucket). Its max age is ``cache.maxTtl``: no token is kept longer than that anyway."""

    bucket: str | None = setting(
        "cache.shared.bucket", values.bucket_name, default=None, env="CACHE_SHARED_BUCKET",
        help="JetStream KV bucket shared by the fleet (created when missing); off when unset")
    key_file: str | None = setting(
        "cache.shared.keyFile", values.optional_text, default=None, env="CACHE_SHARED_KEY_FILE",
        help="file of at least 32 secret bytes sealing the bucket's values (a mounted Secret)")
    previous_key_file: str | None = setting(
        "cache.shared.previousKeyFile", values.optional_text, default=None,
        env="CACHE_SHARED_PREVIOUS_KEY_FILE",
        help="the key file before a rotation: its values are still read and re-sealed")
    replicas: int = setting(
        "cache.shared.replicas", values.replicas, default=defaults.CACHE_SHARED_REPLICAS,
        env="CACHE_SHARED_REPLICAS", help="copies of the bucket kept by clustered JetStream")
    timeout: float = setting(
        "cache.shared.timeout", values.timeout_seconds, default=defaults.CACHE_SHARED_TIMEOUT,
        env="CACHE_SHARED_TIMEOUT",
        help="seconds one JetStream call waits; past it the tier counts as down for a while")

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
        "cache.enabled", values.boolean, default=defaults.CACHE_ENABLED, env="CACHE_ENABLED",
        help="serve repeated requests from the token cache")
    max_entries: int = setting(
        "cache.maxEntries", values.positive_integer, default=defaults.CACHE_MAX_ENTRIES,
        env="CACHE_MAX_ENTRIES", help="tokens kept (LRU)")
    expiry_margin: float = setting(
        "cache.expiryMargin", values.wait_seconds, default=defaults.CACHE_EXPIRY_MARGIN,
        env="CACHE_EXPIRY_MARGIN",
        help="seconds of life a cached token must have left to be served")
    refresh_ahead: float = setting(
        "cache.refreshAhead", values.fraction, default=defaults.CACHE_REFRESH_AHEAD,
        env="CACHE_REFRESH_AHEAD",
        help="last share of a token's servable life in which it is refreshed in the background")
    max_ttl: float = setting(
        "cache.maxTtl", values.timeout_seconds, default=defaults.CACHE_MAX_TTL, env="CACHE_MAX_TTL",
        help="longest life in seconds a cached token is given (and replies say)")
    shared: SharedCacheConfig = field(default_factory=SharedCacheConfig)


@dataclass(frozen=True)
class HealthConfig(_Section):
    """The optional HTTP listener for probes and metrics."""

    port: int | None = setting(
        "health.port", values.port, default=None, env="HEALTH_PORT", flag="health-port",
        help="port of /healthz, /readyz and /metrics (off when unset; 0: any free port)")
    """``None``: off (the library's default; the image turns it on); 0: any free port."""
    host: str = setting(
        "health.host", values.text, default=defaults.HEALTH_HOST, env="HEALTH_HOST",
        help="address the health listener binds")
    """Address to listen on."""


@dataclass(frozen=True)
class CredentialsConfig(_Section):
    """Named credentials: client ids and secrets the worker holds, so none rides the bus."""

    directory: str | None = setting(
        "credentials.dir", values.directory, default=None, env="CREDENTIALS_DIR",
        flag="credentials-dir",
        help="folder of named credentials (<name>/client_id, <name>/client_secret)")
    """Mounted from a Kubernetes Secret; without it the named subjects are not subscribed."""
    inline: bool = setting(
        "credentials.inline", values.boolean, default=defaults.INLINE_SECRETS, env="INLINE_SECRETS",
        help="serve requests that carry their own client_secret")
    """False: a request carrying ``client_secret`` gets ``inline_secrets_disabled``."""


@dataclass(frozen=True)
class Config(_Section):
    """Everything a :class:`~token_worker.TokenWorker` needs."""

    environment: str = setting(
        "environment", values.text, default=defaults.ENVIRONMENT, env="APP_ENV", flag="env",
        help="deployment environment, logged with every line")
    log_level: str = setting(
        "logLevel", values.log_level, default=defaults.LOG_LEVEL,
        env=("LOG_LEVEL", "APP_LOG_LEVEL"), flag="log-level", help="debug, info, warning, error")
    name_suffix: str | None = setting(
        "nameSuffix", values.optional_text, default=None, env="WORKER_NAME_SUFFIX",
        flag="name-suffix", help="client name suffix (else POD_NAME, else host name)")
    """Client name suffix; ``None`` falls back to WORKER_NAME_SUFFIX, POD_NAME, host name."""
    subject: str = setting(
        "subject", values.name, default=defaults.SUBJECT, env="TOKEN_SUBJECT", flag="subject",
        help="request subject")
    queue: str = setting(
        "queue", values.name, default=defaults.QUEUE_GROUP, env="QUEUE_GROUP", flag="queue",
        help="queue group")
    named_subject: str = setting(
        "namedSubject", values.subject_prefix, default=defaults.NAMED_SUBJECT, env="NAMED_SUBJECT",
        help="prefix of named-credential subjects (<prefix>.<credential>)")
    workers: int = setting(
        "workers", values.positive_integer, default=defaults.WORKERS, env="WORKERS", flag="workers",
        help="requests served at once")
    backlog: int = setting(
        "backlog", values.non_negative_integer, default=defaults.BACKLOG, env="BACKLOG",
        help="requests that may wait for a thread before 'overloaded'")
    max_payload: int = setting(
        "maxPayload", values.positive_integer, default=defaults.MAX_PAYLOAD, env="MAX_PAYLOAD",
        help="largest request accepted, bytes")
    drain_timeout: float = setting(
        "drainTimeout", values.wait_seconds, default=defaults.DRAIN_TIMEOUT, env="DRAIN_TIMEOUT",
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
