"""The config types: one frozen dataclass per section, each field declared as the setting
that fills it (see :mod:`token_worker.config`). A section validates itself in
``__post_init__`` (:class:`~token_worker.config.declare.Section`); rules between fields go
in its ``_check``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from token_worker import defaults, nkey_auth
from token_worker.config import parsers
from token_worker.config.declare import Section, setting
from token_worker.config.parsers import parse_nats_urls
from token_worker.errors import ConfigError
from token_worker.secret import Secret, load_key_file

# --- the config types ------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsConfig(Section):
    """TLS towards NATS; used when a URL has the ``tls://`` scheme."""

    ca_file: str | None = setting(
        "nats.tls.caFile", parsers.optional_text, default=None, env="NATS_TLS_CA",
        help="CA bundle for tls:// servers")
    """CA bundle that signs the server's certificate."""
    cert_file: str | None = setting(
        "nats.tls.certFile", parsers.optional_text, default=None, env="NATS_TLS_CERT",
        help="client certificate")
    """Client certificate, for servers that verify clients."""
    key_file: str | None = setting(
        "nats.tls.keyFile", parsers.optional_text, default=None, env="NATS_TLS_KEY",
        help="client key")
    """Key of the client certificate."""
    verify: bool = setting(
        "nats.tls.verify", parsers.boolean, default=defaults.NATS_TLS_VERIFY, env="NATS_TLS_VERIFY",
        help="verify the server certificate")
    """Verify the server's certificate (turn off only for local experiments)."""

    def _check(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise self._invalid(None, "certFile and keyFile go together")


@dataclass(frozen=True)
class NatsConfig(Section):
    """How to reach NATS and how to behave when it goes away."""

    urls: tuple[str, ...] = setting(
        "nats.url", parse_nats_urls, default=(defaults.NATS_URL,), env="NATS_URL",
        flag="nats-url", help="server URL(s), comma-separated")
    """Servers; shuffled every round unless ``no_randomize`` (as nats.go does)."""
    allow_reconnect: bool = setting(
        "nats.allowReconnect", parsers.boolean, default=defaults.ALLOW_RECONNECT,
        env="ALLOW_RECONNECT", help="reconnect after losing the server")
    max_reconnect: int = setting(
        "nats.maxReconnect", parsers.whole_number(minimum=None, maximum=1_000_000),
        default=defaults.MAX_RECONNECT, env="MAX_RECONNECT",
        help="reconnect rounds before giving up; negative: forever")
    """Rounds over the servers before giving up; negative is forever, 0 is none."""
    reconnect_wait: float = setting(
        "nats.reconnectWait", parsers.seconds(maximum=600), default=defaults.RECONNECT_WAIT,
        env="RECONNECT_WAIT", help="seconds between reconnect rounds")
    connect_timeout: float = setting(
        "nats.connectTimeout", parsers.seconds(maximum=300, positive=True),
        default=defaults.CONNECT_TIMEOUT,
        env="NATS_CONNECT_TIMEOUT", help="seconds for TCP connect and handshake")
    ping_interval: float = setting(
        "nats.pingInterval", parsers.seconds(maximum=3600, positive=True),
        default=defaults.PING_INTERVAL,
        env="NATS_PING_INTERVAL", help="seconds between keep-alive PINGs")
    max_pings_out: int = setting(
        "nats.maxPingsOut", parsers.whole_number(minimum=1, maximum=100),
        default=defaults.MAX_PINGS_OUT,
        env="NATS_MAX_PINGS_OUT", help="unanswered PINGs before the server is lost")
    reconnect_buffer_size: int = setting(
        "nats.reconnectBufSize", parsers.whole_number(maximum=1024 * 1024 * 1024),
        default=defaults.RECONNECT_BUFFER_SIZE, env="NATS_RECONNECT_BUF_SIZE",
        help="bytes published while reconnecting, sent once back; 0: fail at once")
    """Bytes published while reconnecting that are kept for the next server; 0: none."""
    no_randomize: bool = setting(
        "nats.noRandomize", parsers.boolean, default=defaults.NATS_NO_RANDOMIZE,
        env="NATS_NO_RANDOMIZE", help="try servers in the given order instead of shuffled")
    """Try the servers in the given order (else shuffled every round, as nats.go does)."""
    username: str | None = setting(
        "nats.username", parsers.optional_text, default=None, env="NATS_USER", help="NATS user")
    password: Secret | None = setting(  # noqa: RUF009 - setting() returns a dataclass field
        "nats.password", parsers.secret, default=None, env="NATS_PASS", secret=True,
        help="NATS password")
    token: Secret | None = setting(  # noqa: RUF009 - setting() returns a dataclass field
        "nats.token", parsers.secret, default=None, env="NATS_TOKEN", secret=True,
        help="NATS auth token")
    creds_file: str | None = setting(
        "nats.credsFile", parsers.creds_file, default=None, env="NATS_CREDS",
        help="NATS .creds file (user JWT and NKey seed), for operator-mode servers")
    """Read at every connect, so a rotated file is used on the next reconnect."""
    nkey_file: str | None = setting(
        "nats.nkeyFile", parsers.nkey_file, default=None, env="NATS_NKEY",
        help="file holding a NATS user NKey seed (servers with nkey users)")
    tls: TlsConfig = field(default_factory=TlsConfig)

    def _check(self) -> None:
        if self.password and not self.username:
            raise self._invalid("password", f"needs {self._key('username')}")
        if self.creds_file and self.nkey_file:
            raise self._invalid("nkey_file", f"give it or {self._key('creds_file')}, not both")

    def auth(self) -> nkey_auth.NatsAuth | None:
        """The NKey-based authentication these settings name (a fresh object: it reads
        its file at every connect), or None."""
        if self.creds_file:
            return nkey_auth.CredsFileAuth(self.creds_file)
        if self.nkey_file:
            return nkey_auth.NkeySeedFileAuth(self.nkey_file)
        return None


@dataclass(frozen=True)
class IdpConfig(Section):
    """Where and how to ask the identity provider for tokens."""

    url: str = setting(
        "idp.url", parsers.http_url, default=defaults.IDP_URL, env="IDP_URL", flag="idp-url",
        help="identity provider base URL")
    token_path: str = setting(
        "idp.tokenPath", parsers.url_path, default=defaults.IDP_TOKEN_PATH, env="IDP_TOKEN_PATH",
        flag="idp-token-path", help="token endpoint path")
    timeout: float = setting(
        "idp.timeout", parsers.seconds(maximum=300, positive=True),
        default=defaults.IDP_TIMEOUT, env="IDP_TIMEOUT",
        help="seconds one IdP attempt may take: connect, headers and body")
    auth_method: str = setting(
        "idp.authMethod", parsers.auth_method, default=defaults.IDP_AUTH_METHOD,
        env="IDP_AUTH_METHOD", help="client_secret_post or client_secret_basic")
    default_scope: str = setting(
        "idp.defaultScope", parsers.text, default=defaults.IDP_DEFAULT_SCOPE,
        env="IDP_DEFAULT_SCOPE", help="scope asked for when a request names none")
    issuer: str | None = setting(
        "idp.issuer", parsers.optional_http_url, default=None, env="IDP_ISSUER", flag="idp-issuer",
        help="issuer URL: token endpoint from OIDC discovery (instead of url + tokenPath)")
    """With an issuer, the token endpoint is read from its OIDC discovery document."""
    deadline: float = setting(
        "idp.deadline", parsers.seconds(maximum=600, positive=True),
        default=defaults.IDP_DEADLINE, env="IDP_DEADLINE",
        help="seconds one token fetch may take, retries included")
    failure_threshold: int = setting(
        "idp.failureThreshold", parsers.whole_number(minimum=1, maximum=1000),
        default=defaults.IDP_FAILURE_THRESHOLD, env="IDP_FAILURE_THRESHOLD",
        help="distinct clients failing (or failures to reach the endpoint) in "
             "idp.failureWindow before the token endpoint's circuit opens")
    cool_down: float = setting(
        "idp.coolDown", parsers.seconds(maximum=3600, positive=True),
        default=defaults.IDP_COOL_DOWN,
        env="IDP_COOL_DOWN",
        help="seconds of failing fast before the IdP is tried again")
    default_expires_in: int = setting(
        "idp.defaultExpiresIn", parsers.whole_number(maximum=604_800),
        default=defaults.IDP_DEFAULT_EXPIRES_IN, env="IDP_DEFAULT_EXPIRES_IN",
        help="seconds of life of a token whose answer has no expires_in")
    """Seconds of life of a token whose answer has no ``expires_in`` (RFC 6749 5.1)."""
    max_response_bytes: int = setting(
        "idp.maxResponseBytes", parsers.whole_number(minimum=1, maximum=64 * 1024 * 1024),
        default=defaults.IDP_MAX_RESPONSE_BYTES,
        env="IDP_MAX_RESPONSE_BYTES",
        help="largest token endpoint answer read, bytes; a larger one is refused")
    failure_window: float = setting(
        "idp.failureWindow", parsers.seconds(maximum=3600, positive=True),
        default=defaults.IDP_FAILURE_WINDOW,
        env="IDP_FAILURE_WINDOW",
        help="seconds in which failures count as evidence against the token endpoint")
    half_open_probes: int = setting(
        "idp.halfOpenProbes", parsers.whole_number(minimum=1, maximum=100),
        default=defaults.IDP_HALF_OPEN_PROBES,
        env="IDP_HALF_OPEN_PROBES",
        help="calls let through at once after a cool-down; the first answer closes the circuit")
    client_backoff: float = setting(
        "idp.clientBackoff", parsers.seconds(maximum=3600, positive=True),
        default=defaults.IDP_CLIENT_BACKOFF,
        env="IDP_CLIENT_BACKOFF",
        help="first pause, seconds, for a key whose fetch failed (doubles, jittered)")
    client_backoff_max: float = setting(
        "idp.clientBackoffMax", parsers.seconds(maximum=86400, positive=True),
        default=defaults.IDP_CLIENT_BACKOFF_MAX,
        env="IDP_CLIENT_BACKOFF_MAX", help="longest pause, seconds, for a failing key")
    refusal_memory: float = setting(
        "idp.refusalMemory", parsers.seconds(maximum=3600), default=defaults.IDP_REFUSAL_MEMORY,
        env="IDP_REFUSAL_MEMORY",
        help="seconds an invalid_client, unauthorized_client or invalid_scope answer is "
             "given again from memory; 0: off")
    client_rate: float = setting(
        "idp.clientRate", parsers.rate(maximum=100_000),
        default=defaults.IDP_CLIENT_RATE, env="IDP_CLIENT_RATE",
        help="IdP calls a second one client id or credential may cause (skip_cache included)")
    client_burst: int = setting(
        "idp.clientBurst", parsers.whole_number(minimum=1, maximum=1_000_000),
        default=defaults.IDP_CLIENT_BURST,
        env="IDP_CLIENT_BURST", help="IdP calls one client id or credential may cause at once")
    max_calls_per_second: float = setting(
        "idp.maxCallsPerSecond", parsers.rate(maximum=100_000),
        default=defaults.IDP_MAX_CALLS_PER_SECOND,
        env="IDP_MAX_CALLS_PER_SECOND",
        help="ceiling on this replica's calls to one token endpoint, per second")
    ca_file: str | None = setting(
        "idp.caFile", parsers.ca_file, default=None, env="IDP_CA_FILE",
        help="CA bundle (PEM) the IdP's certificate is verified against, instead of the "
             "system's")
    """Trusted for IdP connections in place of the system's CAs (a private CA); a
    credential's own ``ca.crt`` wins for its calls. Verification is never switched off."""

    @property
    def token_url(self) -> str:
        """The token endpoint: base URL + token path."""
        return self.url.rstrip("/") + "/" + self.token_path.lstrip("/")




@dataclass(frozen=True)
class SharedCacheConfig(Section):
    """The shared token tier: a JetStream KV bucket every replica reads (off without a
    bucket). Its max age is ``cache.maxTtl``: no token is kept longer than that anyway."""

    bucket: str | None = setting(
        "cache.shared.bucket", parsers.bucket_name, default=None, env="CACHE_SHARED_BUCKET",
        help="JetStream KV bucket shared by the fleet (created when missing); off when unset")
    key_file: str | None = setting(
        "cache.shared.keyFile", parsers.optional_text, default=None, env="CACHE_SHARED_KEY_FILE",
        help="file of at least 32 secret bytes sealing the bucket's values (a mounted Secret)")
    previous_key_file: str | None = setting(
        "cache.shared.previousKeyFile", parsers.optional_text, default=None,
        env="CACHE_SHARED_PREVIOUS_KEY_FILE",
        help="the key file before a rotation: its values are still read and re-sealed")
    replicas: int = setting(
        "cache.shared.replicas", parsers.replicas, default=defaults.CACHE_SHARED_REPLICAS,
        env="CACHE_SHARED_REPLICAS", help="copies of the bucket kept by clustered JetStream")
    timeout: float = setting(
        "cache.shared.timeout", parsers.seconds(maximum=60, positive=True),
        default=defaults.CACHE_SHARED_TIMEOUT,
        env="CACHE_SHARED_TIMEOUT",
        help="seconds one JetStream call waits; past it the tier counts as down for a while")

    def _check(self) -> None:
        if self.bucket is None:
            return
        if not self.key_file:
            raise self._invalid("bucket", f"needs {self._key('key_file')}")
        # Read now, so a missing or short key fails the start, naming the setting (never
        # the bytes).
        for name in ("key_file", "previous_key_file"):
            path = getattr(self, name)
            if path:
                try:
                    load_key_file(path)
                except ConfigError as error:
                    raise self._invalid(name, error.problem) from None


@dataclass(frozen=True)
class CacheConfig(Section):
    """The per-worker token cache."""

    enabled: bool = setting(
        "cache.enabled", parsers.boolean, default=defaults.CACHE_ENABLED, env="CACHE_ENABLED",
        help="serve repeated requests from the token cache")
    max_entries: int = setting(
        "cache.maxEntries", parsers.whole_number(minimum=1, maximum=1_000_000),
        default=defaults.CACHE_MAX_ENTRIES,
        env="CACHE_MAX_ENTRIES", help="tokens kept (LRU)")
    max_entries_per_client: int = setting(
        "cache.maxEntriesPerClient", parsers.whole_number(minimum=1, maximum=1_000_000),
        default=defaults.CACHE_MAX_ENTRIES_PER_CLIENT, env="CACHE_MAX_ENTRIES_PER_CLIENT",
        help="tokens one client id keeps; past it, it evicts its own least recently used")
    expiry_margin: float = setting(
        "cache.expiryMargin", parsers.seconds(maximum=3600), default=defaults.CACHE_EXPIRY_MARGIN,
        env="CACHE_EXPIRY_MARGIN",
        help="seconds of life a cached token must have left to be served")
    refresh_ahead: float = setting(
        "cache.refreshAhead", parsers.fraction, default=defaults.CACHE_REFRESH_AHEAD,
        env="CACHE_REFRESH_AHEAD",
        help="last share of a token's servable life in which it is refreshed in the background")
    max_ttl: float = setting(
        "cache.maxTtl", parsers.seconds(maximum=604_800, positive=True),
        default=defaults.CACHE_MAX_TTL,
        env="CACHE_MAX_TTL",
        help="longest life in seconds a cached token is given (and replies say)")
    shared: SharedCacheConfig = field(default_factory=SharedCacheConfig)


@dataclass(frozen=True)
class HealthConfig(Section):
    """The optional HTTP listener for probes and metrics."""

    port: int | None = setting(
        "health.port", parsers.port, default=None, env="HEALTH_PORT", flag="health-port",
        help="port of /healthz, /readyz and /metrics (off when unset; 0: any free port)")
    """``None``: off (the library's default; the image turns it on); 0: any free port."""
    host: str = setting(
        "health.host", parsers.text, default=defaults.HEALTH_HOST, env="HEALTH_HOST",
        help="address the health listener binds")
    """Address to listen on."""


@dataclass(frozen=True)
class CredentialsConfig(Section):
    """Named credentials: client ids and secrets the worker holds, so none rides the bus."""

    directory: str | None = setting(
        "credentials.dir", parsers.directory, default=None, env="CREDENTIALS_DIR",
        flag="credentials-dir",
        help="folder of named credentials (<name>/client_id, <name>/client_secret)")
    """Mounted from a Kubernetes Secret; without it the named subjects are not subscribed."""
    inline: bool = setting(
        "credentials.inline", parsers.boolean, default=defaults.INLINE_SECRETS,
        env="INLINE_SECRETS",
        help="serve requests that carry their own client_secret")
    """False: a request carrying ``client_secret`` gets ``inline_secrets_disabled``."""


@dataclass(frozen=True)
class Config(Section):
    """Everything a :class:`~token_worker.TokenWorker` needs."""

    environment: str = setting(
        "environment", parsers.text, default=defaults.ENVIRONMENT, env="APP_ENV", flag="env",
        help="deployment environment, logged with every line")
    log_level: str = setting(
        "logLevel", parsers.log_level, default=defaults.LOG_LEVEL,
        env=("LOG_LEVEL", "APP_LOG_LEVEL"), flag="log-level", help="debug, info, warning, error")
    name_suffix: str | None = setting(
        "nameSuffix", parsers.optional_text, default=None, env="WORKER_NAME_SUFFIX",
        flag="name-suffix", help="client name suffix (else POD_NAME, else host name)")
    """Client name suffix; ``None`` falls back to WORKER_NAME_SUFFIX, POD_NAME, host name."""
    subject: str = setting(
        "subject", parsers.name, default=defaults.SUBJECT, env="TOKEN_SUBJECT", flag="subject",
        help="request subject")
    queue: str = setting(
        "queue", parsers.name, default=defaults.QUEUE_GROUP, env="QUEUE_GROUP", flag="queue",
        help="queue group")
    named_subject: str = setting(
        "namedSubject", parsers.subject_prefix, default=defaults.NAMED_SUBJECT, env="NAMED_SUBJECT",
        help="prefix of named-credential subjects (<prefix>.<credential>)")
    reply_subjects: tuple[str, ...] = setting(
        "replySubjects", parsers.reply_subjects, default=defaults.REPLY_SUBJECTS,
        env="REPLY_SUBJECTS",
        help="where replies may go: <prefix>.> patterns, comma-separated (> for anywhere); a "
             "request whose reply subject is elsewhere is dropped, never answered")
    workers: int = setting(
        "workers", parsers.whole_number(minimum=1, maximum=1024), default=defaults.WORKERS,
        env="WORKERS", flag="workers",
        help="requests served at once")
    backlog: int = setting(
        "backlog", parsers.whole_number(maximum=100_000), default=defaults.BACKLOG,
        env="BACKLOG",
        help="requests that may wait for a thread before 'overloaded'")
    max_payload: int = setting(
        "maxPayload", parsers.whole_number(minimum=1, maximum=64 * 1024 * 1024),
        default=defaults.MAX_PAYLOAD, env="MAX_PAYLOAD",
        help="largest request accepted, bytes")
    drain_timeout: float = setting(
        "drainTimeout", parsers.seconds(maximum=3600), default=defaults.DRAIN_TIMEOUT,
        env="DRAIN_TIMEOUT",
        help="seconds a stop waits for in-flight requests")
    max_waiters_per_key: int = setting(
        "maxWaitersPerKey", parsers.whole_number(minimum=1, maximum=1_000_000),
        default=defaults.MAX_WAITERS_PER_KEY,
        env="MAX_WAITERS_PER_KEY",
        help="requests that may wait for one token being fetched (no thread each)")
    max_waiting: int = setting(
        "maxWaiting", parsers.whole_number(minimum=1, maximum=10_000_000),
        default=defaults.MAX_WAITING, env="MAX_WAITING",
        help="requests that may wait for tokens being fetched, in all")
    nats: NatsConfig = field(default_factory=NatsConfig)
    idp: IdpConfig = field(default_factory=IdpConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    credentials: CredentialsConfig = field(default_factory=CredentialsConfig)
