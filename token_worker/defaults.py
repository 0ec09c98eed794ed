"""Every default in one place, each with what it is for.

Each setting is declared once, in :mod:`token_worker.config`, and takes its default from here.

The names and values marked "original" are those of the service token-worker re-creates,
so that a config written for it means the same here.
"""

from __future__ import annotations

ENVIRONMENT = "dev"
"""original: the deployment environment's name, logged with every line."""
LOG_LEVEL = "info"
"""original: the log level."""

NATS_URL = "nats://localhost:4222"
"""original: where NATS is; several URLs may be given separated by commas."""
ALLOW_RECONNECT = True
"""original: reconnect after losing the server."""
MAX_RECONNECT = 10
"""original: reconnect attempts before giving up (a round over every server is one
attempt); negative means forever, as in nats.go."""
RECONNECT_WAIT = 5.0
"""original: seconds between reconnect attempts."""
CONNECT_TIMEOUT = 2.0
"""Seconds to open a TCP connection and finish the NATS handshake."""
PING_INTERVAL = 20.0
"""Seconds between keep-alive PINGs when the server is quiet."""
MAX_PINGS_OUT = 2
"""Unanswered PINGs after which the server counts as lost (nats.py and nats.go use 2)."""
NATS_NO_RANDOMIZE = False
"""Try the servers in the order given; by default each round shuffles them (as nats.go does),
so a fleet given one list spreads over the cluster instead of piling onto its first node."""
RECONNECT_BUFFER_SIZE = 8 * 1024 * 1024
"""Bytes of messages published while reconnecting that are kept and sent once connected
again (nats.go's ``ReconnectBufSize`` default); past it, a publish fails at once."""

SUBJECT = "token.request"
"""original: the request subject (env ``TOKEN_SUBJECT``)."""
QUEUE_GROUP = "token-workers"
"""original: the queue group every replica joins, so each request is answered once."""

IDP_URL = "https://idp.example.com"
"""original: the identity provider's base URL."""
IDP_TOKEN_PATH = "/realms/phoenix/protocol/openid-connect/token"  # noqa: S105 - a path
"""original: the token endpoint path, a Keycloak realm's."""
IDP_TIMEOUT = 10.0
"""original: seconds to wait for the IdP's answer."""
IDP_AUTH_METHOD = "client_secret_post"
"""How the client authenticates at the token endpoint (or ``client_secret_basic``)."""
IDP_DEFAULT_SCOPE = "openid profile"
"""original: the scope asked for when a request names none ("" asks for none)."""

IDP_DEADLINE = 8.0
"""Seconds one token fetch may take with all its retries; keep it below requesters'
timeouts so they get an answer rather than silence."""
IDP_FAILURE_THRESHOLD = 5
"""Distinct clients whose fetches failed (or failures to reach the endpoint at all) within
``IDP_FAILURE_WINDOW`` after which the token endpoint counts as failing and is not asked for
a cool-down. One client's failures never open it: they back that client off."""
IDP_FAILURE_WINDOW = 30.0
"""Seconds in which failures add up to evidence against the token endpoint."""
IDP_HALF_OPEN_PROBES = 3
"""Calls let through at once after a cool-down (a few, so one client's failure cannot keep
the endpoint closed for everyone); the first that gets an answer closes the circuit."""
IDP_CLIENT_BACKOFF = 1.0
"""First pause, seconds, before a key whose fetch failed is sent to the IdP again; it
doubles with each failure (full jitter), up to ``IDP_CLIENT_BACKOFF_MAX``."""
IDP_CLIENT_BACKOFF_MAX = 60.0
"""Longest pause, seconds, for a key that keeps failing."""
IDP_REFUSAL_MEMORY = 10.0
"""Seconds an ``invalid_client``, ``unauthorized_client`` or ``invalid_scope`` answer is
given again from memory: a wrong secret asked a thousand times is one IdP call, not a
brute-force lockout at the IdP."""
IDP_CLIENT_RATE = 1.0
"""IdP calls a second one client id (or named credential) may cause, ``skip_cache``
included: a token bucket refilled at this rate."""
IDP_CLIENT_BURST = 10
"""IdP calls one client id (or named credential) may cause at once (the bucket's size)."""
IDP_MAX_CALLS_PER_SECOND = 100.0
"""Ceiling on one replica's calls to one token endpoint a second (a flood of distinct
client ids ends here, answered ``overloaded``); the fleet's is this times the replicas.
A new replica's first second fetches a token for every client it is asked for: 100 keeps
a fleet of a hundred services' cold start within it."""
IDP_COOL_DOWN = 10.0
"""Seconds the IdP is not asked after the failure threshold (fail fast, no thread pile-up)."""
IDP_DEFAULT_EXPIRES_IN = 3600
"""Seconds of life of a token whose answer has no ``expires_in`` (RFC 6749 5.1 leaves it to
the server's documentation; MSAL assumes about an hour)."""
IDP_MAX_RESPONSE_BYTES = 1024 * 1024
"""Largest token endpoint answer read (x/oauth2's limit); a larger one is refused unread."""

CACHE_ENABLED = True
"""Serve repeated requests for the same client, secret and scopes from memory."""
CACHE_MAX_ENTRIES = 10_000
"""Tokens kept per worker (least recently used go first): memory stays bounded."""
CACHE_MAX_ENTRIES_PER_CLIENT = 100
"""Tokens one client id keeps at most (its scope sets): a client over its share evicts its
own least recently used tokens, never another client's."""
CACHE_EXPIRY_MARGIN = 30.0
"""Seconds of life a token must have left to be served from the cache."""
CACHE_REFRESH_AHEAD = 0.2
"""Share of a token's life, at its end, in which one background refresh replaces it."""
CACHE_MAX_TTL = 86_400.0
"""Longest life a cached token is given (a day), whatever ``expires_in`` the IdP said."""
CACHE_SHARED_TIMEOUT = 1.0
"""Seconds one JetStream call of the shared tier waits for its answer; past it the tier
counts as down for a few seconds and requests go to the local cache and the IdP."""
CACHE_SHARED_REPLICAS = 1
"""Copies of the shared tier's bucket (3 on a clustered JetStream survives a lost node)."""

WORKERS = 32
"""Threads that serve requests needing the IdP (cache hits need none): they mostly wait
on the network, so there are more of them than cores."""
BACKLOG = 256
"""Requests that may wait for a free thread; past that a request gets ``overloaded``."""
MAX_PAYLOAD = 64 * 1024
"""Largest request body accepted, in bytes; larger ones get ``invalid_request``."""
DRAIN_TIMEOUT = 30.0
"""Seconds a stop waits for in-flight requests before closing anyway."""
MAX_WAITERS_PER_KEY = 1000
"""Requests that may wait for one token being fetched (they hold no thread: only memory,
which this bounds); the next is answered ``overloaded``."""
MAX_WAITING = 10_000
"""Requests that may wait for tokens being fetched, all keys together."""

NATS_TLS_VERIFY = True
"""Verify the NATS server's certificate on ``tls://`` URLs (off only for local experiments)."""
HEALTH_HOST = "0.0.0.0"  # noqa: S104 - kubelet and Prometheus reach the pod's address
"""Address the health and metrics listener binds (its port is off unless set)."""

NAMED_SUBJECT = "token.named"
"""Prefix of the named-credential subjects: a request on ``token.named.orders`` is served
with the worker's ``orders`` credential."""
REPLY_SUBJECTS = ("_INBOX.>",)
"""Where replies may go: the inboxes of every NATS client library's request()."""
INLINE_SECRETS = True
"""Serve requests that carry their own ``client_secret`` (the original's requests)."""
LONGEST_WAIT = 86_400.0
"""The longest timeout or budget a requester takes (a day; ``token-request --timeout``
too): more is no deadline, and past ``threading.TIMEOUT_MAX`` (about 292 years) waits fail
with OverflowError."""
