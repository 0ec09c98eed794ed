"""Configuration: one typed object from defaults, a JSON file, environment and flags.

Sources rise in precedence in that order. Each setting is declared once, as the dataclass
field it fills (:mod:`token_worker.config.sections`)::

    reconnect_wait: float = setting(
        "nats.reconnectWait", parsers.seconds(maximum=600), default=defaults.RECONNECT_WAIT,
        env="RECONNECT_WAIT", help="seconds between reconnect rounds")

The declaration holds the JSON key, environment variables, flag, parser, help and default;
the loader, the flag parser, :func:`describe_settings` (the README table) and the types
derive from it. Validation lives in the types: every section runs its parsers in
``__post_init__``, so a config built in code fails as one read from a file does, naming
the field (``invalid config nats.reconnectWait (from code): ...``). The loader names the
source instead (``file /app/configs/app.json``, ``env RECONNECT_WAIT``, ``flag -idp-url``).
Secret values are never shown.

The package, one job a module:

- :mod:`~token_worker.config.declare`: :func:`setting` and the :class:`Setting` it makes,
  and the ``Section`` base that validates every field however a config was built;
- :mod:`~token_worker.config.parsers`: what a raw value becomes (numbers of seconds,
  URLs, file paths checked at load), each parser idempotent;
- :mod:`~token_worker.config.sections`: the frozen dataclasses, one per section;
- :mod:`~token_worker.config.loader`: :data:`SETTINGS` derived from the types, and
  :func:`load_config` (file, environment, flags).

To add a setting, add one ``setting(...)`` field to the section its key names (``nats.*`` in
:class:`NatsConfig`; a key without a dot in :class:`Config`), with its default in
:mod:`token_worker.defaults` (or ``None`` for "unset"), ``secret=True`` for a secret, and a
README row. A duration, count or size is bounded: its parser is
``parsers.seconds(maximum=..., positive=...)`` or ``parsers.whole_number(minimum=...,
maximum=...)``, and its README row says "at most" that maximum. A new section is a frozen
dataclass deriving from ``Section``, added to its parent as ``field(default_factory=...)``;
its JSON name is the attribute name. A rule between fields goes in the section's
``_check``. A key in the wrong section, or a key, variable or flag claimed twice, fails at
import.
"""

from __future__ import annotations

from token_worker.config.declare import CODE, Setting, setting
from token_worker.config.loader import (
    SETTINGS,
    build_flag_parser,
    describe_settings,
    load_config,
    parse_flags,
)
from token_worker.config.parsers import parse_nats_urls
from token_worker.config.sections import (
    CacheConfig,
    Config,
    CredentialsConfig,
    HealthConfig,
    IdpConfig,
    NatsConfig,
    SharedCacheConfig,
    TlsConfig,
)
from token_worker.secret import Secret

__all__ = [
    "CODE", "SETTINGS", "CacheConfig", "Config", "CredentialsConfig", "HealthConfig",
    "IdpConfig", "NatsConfig", "Secret", "Setting", "SharedCacheConfig", "TlsConfig",
    "build_flag_parser", "describe_settings", "load_config", "parse_flags",
    "parse_nats_urls", "setting",
]
