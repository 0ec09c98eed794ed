"""Settings without servers: declared once, validated by the types however they are built.

A config built in code must fail as one read from a file does, naming the field; the
defaults, keys, environment variables and flags of the original must stay as they were.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import math
import re
from typing import Any

import pytest

from tests import ROOT
from tests.nats_jwt import OperatorMode, new_user
from token_worker import ConfigError, defaults, load_config
from token_worker.config import (
    SETTINGS,
    Config,
    IdpConfig,
    NatsConfig,
    Secret,
    TlsConfig,
    describe_settings,
    parse_nats_urls,
)

CONFIG_MODULES = [importlib.import_module(f"token_worker.config.{name}")
                  for name in ("declare", "parsers", "sections", "loader")]
"""Where settings may be declared: every module of the config package."""

ORIGINAL = {
    # key: (default, environment variables, flag), as the three-place declaration had them
    "environment": ("dev", ("APP_ENV",), "env"),
    "logLevel": ("info", ("LOG_LEVEL", "APP_LOG_LEVEL"), "log-level"),
    "nameSuffix": (None, ("WORKER_NAME_SUFFIX",), "name-suffix"),
    "subject": ("token.request", ("TOKEN_SUBJECT",), "subject"),
    "queue": ("token-workers", ("QUEUE_GROUP",), "queue"),
    "workers": (32, ("WORKERS",), "workers"),
    "backlog": (256, ("BACKLOG",), None),
    "maxPayload": (65536, ("MAX_PAYLOAD",), None),
    "drainTimeout": (30.0, ("DRAIN_TIMEOUT",), None),
    "nats.url": (("nats://localhost:4222",), ("NATS_URL",), "nats-url"),
    "nats.allowReconnect": (True, ("ALLOW_RECONNECT",), None),
    "nats.maxReconnect": (10, ("MAX_RECONNECT",), None),
    "nats.reconnectWait": (5.0, ("RECONNECT_WAIT",), None),
    "nats.connectTimeout": (2.0, ("NATS_CONNECT_TIMEOUT",), None),
    "nats.pingInterval": (20.0, ("NATS_PING_INTERVAL",), None),
    "nats.maxPingsOut": (2, ("NATS_MAX_PINGS_OUT",), None),
    "nats.reconnectBufSize": (8388608, ("NATS_RECONNECT_BUF_SIZE",), None),
    "nats.noRandomize": (False, ("NATS_NO_RANDOMIZE",), None),
    "nats.username": (None, ("NATS_USER",), None),
    "nats.password": (None, ("NATS_PASS",), None),
    "nats.token": (None, ("NATS_TOKEN",), None),
    "nats.tls.caFile": (None, ("NATS_TLS_CA",), None),
    "nats.tls.certFile": (None, ("NATS_TLS_CERT",), None),
    "nats.tls.keyFile": (None, ("NATS_TLS_KEY",), None),
    "nats.tls.verify": (True, ("NATS_TLS_VERIFY",), None),
    "idp.url": ("https://idp.example.com", ("IDP_URL",), "idp-url"),
    "idp.tokenPath": ("/realms/phoenix/protocol/openid-connect/token", ("IDP_TOKEN_PATH",),
                      "idp-token-path"),
    "idp.timeout": (10.0, ("IDP_TIMEOUT",), None),
    "idp.authMethod": ("client_secret_post", ("IDP_AUTH_METHOD",), None),
    "idp.defaultScope": ("openid profile", ("IDP_DEFAULT_SCOPE",), None),
    "idp.issuer": (None, ("IDP_ISSUER",), "idp-issuer"),
    "idp.deadline": (8.0, ("IDP_DEADLINE",), None),
    "idp.failureThreshold": (5, ("IDP_FAILURE_THRESHOLD",), None),
    "idp.coolDown": (10.0, ("IDP_COOL_DOWN",), None),
    "idp.defaultExpiresIn": (3600, ("IDP_DEFAULT_EXPIRES_IN",), None),
    "idp.maxResponseBytes": (1048576, ("IDP_MAX_RESPONSE_BYTES",), None),
    "health.port": (None, ("HEALTH_PORT",), "health-port"),
    "health.host": ("0.0.0.0", ("HEALTH_HOST",), None),
    "cache.enabled": (True, ("CACHE_ENABLED",), None),
    "cache.maxEntries": (10000, ("CACHE_MAX_ENTRIES",), None),
    "cache.expiryMargin": (30.0, ("CACHE_EXPIRY_MARGIN",), None),
    "cache.refreshAhead": (0.2, ("CACHE_REFRESH_AHEAD",), None),
    "cache.maxTtl": (86400.0, ("CACHE_MAX_TTL",), None),
    "cache.shared.bucket": (None, ("CACHE_SHARED_BUCKET",), None),
    "cache.shared.keyFile": (None, ("CACHE_SHARED_KEY_FILE",), None),
    "cache.shared.previousKeyFile": (None, ("CACHE_SHARED_PREVIOUS_KEY_FILE",), None),
    "cache.shared.replicas": (1, ("CACHE_SHARED_REPLICAS",), None),
    "cache.shared.timeout": (1.0, ("CACHE_SHARED_TIMEOUT",), None),
}

NEW = {
    # the security settings: key: (default, environment variables, flag)
    "nats.credsFile": (None, ("NATS_CREDS",), None),
    "nats.nkeyFile": (None, ("NATS_NKEY",), None),
    "credentials.dir": (None, ("CREDENTIALS_DIR",), "credentials-dir"),
    "credentials.inline": (True, ("INLINE_SECRETS",), None),
    "namedSubject": ("token.named", ("NAMED_SUBJECT",), None),
    "replySubjects": (("_INBOX.>",), ("REPLY_SUBJECTS",), None),
}

ORIGINAL_DEFAULT_NAMES = {
    "ENVIRONMENT": "dev", "LOG_LEVEL": "info", "NATS_URL": "nats://localhost:4222",
    "ALLOW_RECONNECT": True, "MAX_RECONNECT": 10, "RECONNECT_WAIT": 5.0,
    "CONNECT_TIMEOUT": 2.0, "PING_INTERVAL": 20.0, "MAX_PINGS_OUT": 2,
    "RECONNECT_BUFFER_SIZE": 8388608, "SUBJECT": "token.request",
    "QUEUE_GROUP": "token-workers", "IDP_URL": "https://idp.example.com",
    "IDP_TOKEN_PATH": "/realms/phoenix/protocol/openid-connect/token",
    "IDP_TIMEOUT": 10.0, "IDP_AUTH_METHOD": "client_secret_post",
    "IDP_DEFAULT_SCOPE": "openid profile", "IDP_DEADLINE": 8.0, "IDP_FAILURE_THRESHOLD": 5,
    "IDP_COOL_DOWN": 10.0, "CACHE_ENABLED": True, "CACHE_MAX_ENTRIES": 10000,
    "CACHE_EXPIRY_MARGIN": 30.0, "CACHE_REFRESH_AHEAD": 0.2, "WORKERS": 32, "BACKLOG": 256,
    "MAX_PAYLOAD": 65536, "DRAIN_TIMEOUT": 30.0,
}

BY_KEY = {setting.key: setting for setting in SETTINGS}


def value_at(config: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        config = getattr(config, name)
    return config


def built_in_code(key: str, value: Any) -> Any:
    """The section holding ``key``, built in code with ``value`` for it (the rest default)."""
    *sections, name = BY_KEY[key].path
    section = value_at(Config(), tuple(sections))
    return dataclasses.replace(section, **{name: value})


def as_document(key: str, value: Any) -> dict[str, Any]:
    """``{"nats": {"reconnectWait": value}}`` for ``nats.reconnectWait``."""
    *sections, name = key.split(".")
    document: dict[str, Any] = {name: list(value) if isinstance(value, tuple) else value}
    for section in reversed(sections):
        document = {section: document}
    return document


# --- declared once --------------------------------------------------------------------------


def test_defaults_keys_env_and_flags_are_the_originals():
    config = Config()
    for key, (default, env, flag) in {**ORIGINAL, **NEW}.items():
        setting = BY_KEY[key]
        assert value_at(config, setting.path) == default, key
        assert (setting.env, setting.flag) == (env, flag), key
    assert load_config([], {}) == config
    for name, value in ORIGINAL_DEFAULT_NAMES.items():
        assert getattr(defaults, name) == value, name


def test_describe_settings_covers_every_field_exactly_once():
    def leaves(node: Any, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = []
        for item in dataclasses.fields(node):
            value = getattr(node, item.name)
            if dataclasses.is_dataclass(value):
                found += leaves(value, (*path, item.name))
            else:
                found.append((*path, item.name))
        return found

    fields = leaves(Config(), ())
    rows = describe_settings()
    assert len(rows) == len(SETTINGS) == len(fields)
    assert [setting.path for setting in SETTINGS] == fields
    assert [row["key"] for row in rows] == [setting.key for setting in SETTINGS]
    for row, setting in zip(rows, SETTINGS, strict=True):
        default = value_at(Config(), setting.path)
        assert row["default"] == ("" if default is None else str(default))
        assert row["help"], setting.key


def test_no_setting_is_declared_twice():
    keys = [setting.key for setting in SETTINGS]
    env = [name for setting in SETTINGS for name in setting.env]
    flags = [setting.flag for setting in SETTINGS if setting.flag]
    assert len(set(keys)) == len(keys)
    assert len(set(env)) == len(env)
    assert len(set(flags)) == len(flags)
    # Each key is written once in the source: in its declaration, nowhere else (a flag may
    # be spelled as its key: "queue", "-queue").
    tree = ast.parse("\n".join(inspect.getsource(module) for module in CONFIG_MODULES))
    flag_values = {id(keyword.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                   for keyword in node.keywords if keyword.arg == "flag"}
    literals = [node.value for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in flag_values]
    for key in keys:
        assert literals.count(key) == 1, f"{key} is written {literals.count(key)} times"


def test_every_default_parses_to_itself():
    for setting in SETTINGS:
        if setting.default is not None:
            assert setting.parse(setting.default) == setting.default, setting.key


# --- validation inside the types --------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(BY_KEY))
def test_every_setting_refuses_a_value_of_the_wrong_type_in_code(key):
    with pytest.raises(ConfigError) as caught:
        built_in_code(key, object())
    assert (caught.value.field, caught.value.source) == (key, "code")
    assert f"invalid config {key} (from code)" in str(caught.value)


INVALID = [
    ("environment", 5, "must be a string"),
    ("logLevel", "loud", "must be one of debug"),
    ("subject", "a b", "without spaces"),
    ("queue", "", "non-empty"),
    ("workers", 0, "at least 1"),
    ("backlog", -1, "0 or more"),
    ("maxPayload", 0, "at least 1"),
    ("drainTimeout", -1, ">= 0"),
    ("maxWaitersPerKey", 0, "at least 1"),
    ("maxWaiting", -3, "at least 1"),
    ("nats.url", ("http://x:4222",), "nats://host:port"),
    ("nats.url", ("nats://x:port",), "bad port"),
    ("nats.url", (), "at least one server"),
    ("nats.allowReconnect", "perhaps", "true or false"),
    ("nats.maxReconnect", 2.5, "whole number"),
    ("nats.reconnectWait", -1, ">= 0"),
    ("nats.reconnectWait", "soon", "number of seconds"),
    ("nats.connectTimeout", 0, "> 0"),
    ("nats.pingInterval", math.inf, "finite"),
    ("nats.maxPingsOut", 0, "at least 1"),
    ("nats.reconnectBufSize", -1, "0 or more"),
    ("nats.noRandomize", "shuffle", "true or false"),
    ("nats.password", 12345, "invalid secret value"),
    ("nats.tls.verify", "sometimes", "true or false"),
    ("idp.url", "ftp://x", "http:// or https://"),
    ("idp.url", "not a url", "http:// or https://"),
    ("idp.tokenPath", "no-slash", "starting with '/'"),
    ("idp.timeout", 0, "> 0"),
    ("idp.authMethod", "private_key_jwt", "client_secret_post"),
    ("idp.issuer", "ftp://x", "http:// or https://"),
    ("idp.deadline", math.nan, "finite"),
    ("idp.failureThreshold", 0, "at least 1"),
    ("idp.coolDown", -5, "> 0"),
    ("idp.defaultExpiresIn", -1, "0 or more"),
    ("idp.maxResponseBytes", 0, "at least 1"),
    ("idp.failureWindow", 0, "> 0"),
    ("idp.halfOpenProbes", 0, "at least 1"),
    ("idp.clientBackoff", -1, "> 0"),
    ("idp.clientBackoffMax", 0, "> 0"),
    ("idp.refusalMemory", -1, ">= 0"),
    ("idp.clientRate", 0, "above 0"),
    ("idp.clientRate", "fast", "a number per second"),
    ("idp.clientBurst", 0, "at least 1"),
    ("idp.maxCallsPerSecond", math.inf, "finite"),
    ("idp.caFile", "/no/such/ca.pem", "cannot read the CA file '/no/such/ca.pem'"),
    ("idp.caFile", "/etc/hostname", "holds no PEM certificate"),
    ("cache.enabled", "maybe", "true or false"),
    ("cache.maxEntries", 0, "at least 1"),
    ("cache.maxEntriesPerClient", 0, "at least 1"),
    ("cache.expiryMargin", -1, ">= 0"),
    ("cache.refreshAhead", 1.0, "below 1"),
    ("cache.maxTtl", 0, "> 0"),
    ("cache.shared.bucket", "tokens.prod", "KV bucket name"),
    ("cache.shared.replicas", 0, "at least 1"),
    ("cache.shared.replicas", 7, "5 or fewer"),
    ("cache.shared.timeout", 0, "> 0"),
    ("health.port", 70000, "0 to 65535"),
    ("health.host", 8080, "must be a string"),
    ("nats.credsFile", "/no/such/file.creds", "/no/such/file.creds: file does not exist"),
    ("nats.nkeyFile", "/no/such/user.nk", "/no/such/user.nk: file does not exist"),
    ("credentials.dir", "/no/such/dir", "is not a directory"),
    ("credentials.inline", "sometimes", "true or false"),
    ("namedSubject", "token.*", "without wildcards"),
    ("replySubjects", "audit.log", "<prefix>.> or >"),
    ("replySubjects", "_INBOX.*.>", "<prefix>.> or >"),
    ("replySubjects", "", "at least one subject pattern"),
]


@pytest.mark.parametrize(("raw", "patterns"), [
    ("_INBOX.>", ("_INBOX.>",)), (">", (">",)),
    ("_INBOX.>, replies.orders.>", ("_INBOX.>", "replies.orders.>")),
    (["_INBOX.>", "_I.>"], ("_INBOX.>", "_I.>")),
])
def test_reply_subjects_are_inbox_trees_or_anywhere(raw, patterns, tmp_path):
    path = tmp_path / "app.json"
    path.write_text(json.dumps({"replySubjects": raw}))
    assert load_config(["-config", str(path)], {}).reply_subjects == patterns
    if isinstance(raw, str):
        assert load_config([], {"REPLY_SUBJECTS": raw}).reply_subjects == patterns


@pytest.mark.parametrize(("key", "value", "problem"), INVALID)
def test_invalid_values_fail_the_same_way_in_code_and_in_a_file(key, value, problem, tmp_path):
    with pytest.raises(ConfigError) as in_code:
        built_in_code(key, value)
    assert (in_code.value.field, in_code.value.source) == (key, "code")
    assert problem in in_code.value.problem
    if isinstance(value, float) and not math.isfinite(value):
        return  # not JSON
    path = tmp_path / "app.json"
    path.write_text(json.dumps(as_document(key, value)))
    with pytest.raises(ConfigError) as in_file:
        load_config(["-config", str(path)], {})
    assert in_file.value.field == key
    assert in_file.value.source == f"file {path}"
    assert in_file.value.problem == in_code.value.problem


def test_every_validated_setting_has_an_invalid_case():
    checked = {key for key, _, _ in INVALID}
    # Free text (anything is fine) and optional file names have no invalid value but a type.
    free = {"nameSuffix", "idp.defaultScope", "nats.username", "nats.token",
            "nats.tls.caFile", "nats.tls.certFile", "nats.tls.keyFile",
            "cache.shared.keyFile", "cache.shared.previousKeyFile"}
    assert set(BY_KEY) - free == checked


# --- bounds: every duration, count and size --------------------------------------------------

BOUNDS = {
    # key: (the smallest value taken, the largest), as the README's settings table gives them
    "workers": (1, 1024),
    "backlog": (0, 100_000),
    "maxPayload": (1, 64 * 1024 * 1024),
    "drainTimeout": (0, 3600),
    "nats.maxReconnect": (-1, 1_000_000),
    "nats.reconnectWait": (0, 600),
    "nats.connectTimeout": (0.001, 300),
    "nats.pingInterval": (0.001, 3600),
    "nats.maxPingsOut": (1, 100),
    "nats.reconnectBufSize": (0, 1024 * 1024 * 1024),
    "idp.timeout": (0.001, 300),
    "idp.deadline": (0.001, 600),
    "idp.failureThreshold": (1, 1000),
    "idp.coolDown": (0.001, 3600),
    "idp.defaultExpiresIn": (0, 604_800),
    "idp.maxResponseBytes": (1, 64 * 1024 * 1024),
    "cache.maxEntries": (1, 1_000_000),
    "cache.expiryMargin": (0, 3600),
    "cache.maxTtl": (0.001, 604_800),
    "cache.shared.timeout": (0.001, 60),
    "idp.failureWindow": (0.001, 3600),
    "idp.halfOpenProbes": (1, 100),
    "idp.clientBackoff": (0.001, 3600),
    "idp.clientBackoffMax": (0.001, 86_400),
    "idp.refusalMemory": (0, 3600),
    "idp.clientRate": (0.001, 100_000),
    "idp.clientBurst": (1, 1_000_000),
    "idp.maxCallsPerSecond": (0.001, 100_000),
    "cache.maxEntriesPerClient": (1, 1_000_000),
    "maxWaitersPerKey": (1, 1_000_000),
    "maxWaiting": (1, 10_000_000),
}
NUMBERS_BOUNDED_OTHERWISE = {"cache.refreshAhead", "cache.shared.replicas", "health.port"}
"""A fraction below 1, JetStream's replica limit, a TCP port: bounded by what they are."""


def test_every_duration_count_and_size_has_bounds():
    numbers = {setting.key for setting in SETTINGS if isinstance(setting.default, int | float)
               and not isinstance(setting.default, bool)}
    assert numbers | {"health.port"} == set(BOUNDS) | NUMBERS_BOUNDED_OTHERWISE


@pytest.mark.parametrize("key", sorted(BOUNDS))
def test_the_bounds_are_taken_and_a_step_beyond_is_refused_naming_the_maximum(key, tmp_path):
    lowest, highest = BOUNDS[key]
    integral = isinstance(BY_KEY[key].default, int)
    for value in (lowest, highest):
        assert value_at(built_in_code(key, value), BY_KEY[key].path[-1:]) == value
    beyond = highest + 1 if integral else highest + 0.5
    with pytest.raises(ConfigError) as in_code:
        built_in_code(key, beyond)
    assert f"must be at most {highest}" in in_code.value.problem
    path = tmp_path / "app.json"
    path.write_text(json.dumps(as_document(key, 10**10)))
    with pytest.raises(ConfigError) as in_file:
        load_config(["-config", str(path)], {})
    assert (in_file.value.field, in_file.value.source) == (key, f"file {path}")
    below = lowest - 1 if integral else (0 if lowest else -0.5)  # 0 where it must be above
    if key != "nats.maxReconnect":  # any negative number means forever
        with pytest.raises(ConfigError):
            built_in_code(key, below)


def test_a_huge_timeout_from_the_environment_names_the_variable():
    """IDP_TIMEOUT=1e10 used to pass, and every cache miss then answered internal_error
    (the socket refused the timeout)."""
    with pytest.raises(ConfigError) as caught:
        load_config([], {"IDP_TIMEOUT": "1e10"})
    assert (caught.value.field, caught.value.source) == ("idp.timeout", "env IDP_TIMEOUT")
    assert str(caught.value) == ("invalid config idp.timeout (from env IDP_TIMEOUT): must be "
                                 "at most 300 seconds, got '1e10'")


def test_the_readme_row_of_every_bounded_setting_gives_its_bounds():
    readme = (ROOT / "README.md").read_text().splitlines()
    for key, (lowest, highest) in BOUNDS.items():
        row = next(line for line in readme if line.startswith(f"| `{key}` |"))
        assert f"at most {highest})" in row, key
        if 0 < lowest < 1:
            assert "(above 0, at most" in row, key
        elif lowest >= 1:
            assert f"(at least {lowest}, at most" in row, key


def test_rules_between_fields_name_the_field_in_code_and_the_source_when_loaded():
    with pytest.raises(ConfigError, match="certFile and keyFile go together") as caught:
        TlsConfig(cert_file="client.pem")
    assert (caught.value.field, caught.value.source) == ("nats.tls", "code")
    with pytest.raises(ConfigError, match="certFile and keyFile go together"):
        TlsConfig(key_file="client.key")
    with pytest.raises(ConfigError, match=r"needs nats\.username") as caught:
        NatsConfig(password=Secret("p"))
    assert (caught.value.field, caught.value.source) == ("nats.password", "code")
    with pytest.raises(ConfigError, match=r"needs nats\.username") as caught:
        NatsConfig(username="", password=Secret("p"))

    with pytest.raises(ConfigError) as caught:
        load_config([], {"NATS_PASS": "p"})
    assert (caught.value.field, caught.value.source) == ("nats.password", "env NATS_PASS")
    with pytest.raises(ConfigError) as caught:
        load_config([], {"NATS_TLS_KEY": "client.key"})
    assert (caught.value.field, caught.value.source) == ("nats.tls", "env NATS_TLS_KEY")
    assert TlsConfig(cert_file="c.pem", key_file="c.key").key_file == "c.key"


def test_a_shared_bucket_needs_a_key_file_of_32_bytes_named_with_its_source(tmp_path):
    short = tmp_path / "short.key"
    short.write_bytes(b"k" * 31)
    good = tmp_path / "fleet.key"
    good.write_bytes(b"secret-key-bytes-" * 2)

    with pytest.raises(ConfigError, match=r"needs cache\.shared\.keyFile") as caught:
        load_config([], {"CACHE_SHARED_BUCKET": "tokens"})
    assert (caught.value.field, caught.value.source) == (
        "cache.shared.bucket", "env CACHE_SHARED_BUCKET")
    with pytest.raises(ConfigError, match="holds 31 bytes; at least 32") as caught:
        load_config([], {"CACHE_SHARED_BUCKET": "tokens", "CACHE_SHARED_KEY_FILE": str(short)})
    assert (caught.value.field, caught.value.source) == (
        "cache.shared.keyFile", "env CACHE_SHARED_KEY_FILE")
    assert "kkkk" not in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read the key file") as caught:
        load_config([], {"CACHE_SHARED_BUCKET": "tokens", "CACHE_SHARED_KEY_FILE": str(good),
                         "CACHE_SHARED_PREVIOUS_KEY_FILE": str(tmp_path / "gone.key")})
    assert (caught.value.field, caught.value.source) == (
        "cache.shared.previousKeyFile", "env CACHE_SHARED_PREVIOUS_KEY_FILE")

    config = load_config([], {"CACHE_SHARED_BUCKET": "tokens",
                              "CACHE_SHARED_KEY_FILE": str(good)})
    assert (config.cache.shared.bucket, config.cache.shared.replicas) == ("tokens", 1)
    assert load_config([], {"CACHE_SHARED_KEY_FILE": str(short)}).cache.shared.bucket is None


def test_a_section_of_the_wrong_type_is_refused():
    with pytest.raises(ConfigError) as caught:
        Config(nats="nats://x:4222")  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.source) == ("nats", "code")
    with pytest.raises(ConfigError) as caught:
        NatsConfig(tls={"verify": False})  # type: ignore[arg-type]
    assert caught.value.field == "nats.tls"


@pytest.mark.parametrize("url", [
    "nats://user:hunter2-secret@x:4222",
    "nats://user:hunter2-secret@x:bad",    # the old parser quoted it in "bad port"
    "http://user:hunter2-secret@x:4222",   # the old parser quoted it in "must be nats://"
])
def test_secrets_never_appear_in_errors_from_code_or_loader(url):
    with pytest.raises(ConfigError) as in_code:
        NatsConfig(urls=(url,))
    with pytest.raises(ConfigError) as loaded:
        load_config([], {"NATS_URL": url})
    for error in (in_code.value, loaded.value):
        assert "hunter2-secret" not in str(error)
        assert "credentials" in error.problem


def test_idp_urls_with_credentials_are_refused_without_quoting_them():
    for url in ("https://u:hunter2-secret@idp", "ftp://u:hunter2-secret@idp"):
        with pytest.raises(ConfigError) as caught:
            IdpConfig(url=url)
        assert "hunter2-secret" not in str(caught.value)


def test_secrets_stay_secret_when_built_in_code():
    secret = Secret("hunter2-secret")
    nats = NatsConfig(username="u", password=secret, token="tok-secret-9")  # type: ignore[arg-type]
    assert nats.password is secret
    assert isinstance(nats.token, Secret) and nats.token.reveal() == "tok-secret-9"
    assert "hunter2-secret" not in repr(nats) and "tok-secret-9" not in repr(nats)
    assert NatsConfig(token=Secret("")).token is None


# --- what code-built values become ------------------------------------------------------------


def test_values_already_right_are_kept_as_given():
    urls = ("nats://a:1", "tls://b:4443")
    nats = NatsConfig(urls=urls, reconnect_wait=0.5, max_reconnect=-1)
    assert nats.urls is urls
    assert dataclasses.replace(nats, max_reconnect=3).urls is urls
    assert NatsConfig(reconnect_wait=1).reconnect_wait == 1.0
    config = Config(log_level="debug", subject="tokens.get", workers=4)
    assert dataclasses.replace(config) == config


def test_values_given_loosely_in_code_are_normalised_as_the_loader_does():
    nats = NatsConfig(urls="a, nats://b:5")  # type: ignore[arg-type]
    assert nats.urls == ("nats://a:4222", "nats://b:5")
    assert NatsConfig(urls=["c"]).urls == ("nats://c:4222",)  # type: ignore[arg-type]
    assert Config(log_level="WARN").log_level == "warning"
    assert IdpConfig(url="https://idp.example/").url == "https://idp.example"


def test_a_loaded_config_equals_the_same_config_built_in_code():
    env = {"NATS_URL": "n1,tls://n2:4443", "RECONNECT_WAIT": "0.5", "NATS_USER": "u",
           "NATS_PASS": "p", "LOG_LEVEL": "WARN", "IDP_URL": "http://127.0.0.1:8080/",
           "HEALTH_PORT": "0", "CACHE_REFRESH_AHEAD": "0"}
    built = Config(
        log_level="warning",
        nats=NatsConfig(urls=("nats://n1:4222", "tls://n2:4443"), reconnect_wait=0.5,
                        username="u", password=Secret("p")),
        idp=IdpConfig(url="http://127.0.0.1:8080"),
        health=dataclasses.replace(Config().health, port=0),
        cache=dataclasses.replace(Config().cache, refresh_ahead=0.0),
    )
    assert load_config([], env) == built


@pytest.mark.parametrize(("raw", "expected"), [
    ("localhost", ("nats://localhost:4222",)),
    ("tls://x", ("tls://x:4222",)),
    (" nats://a:1 , ,b:2 ", ("nats://a:1", "nats://b:2")),
    (["nats://a:1", "b"], ("nats://a:1", "nats://b:4222")),
    (("nats://a:1",), ("nats://a:1",)),
])
def test_parse_nats_urls(raw, expected):
    assert parse_nats_urls(raw) == expected
    assert parse_nats_urls(expected) == expected


# --- precedence -------------------------------------------------------------------------------

FLAGGED = {
    # key: (from the file, from env, from a flag) -- each valid
    "environment": ("f", "e", "x"),
    "logLevel": ("debug", "error", "critical"),
    "nameSuffix": ("f", "e", "x"),
    "subject": ("s.f", "s.e", "s.x"),
    "queue": ("qf", "qe", "qx"),
    "workers": (2, "3", "4"),
    "nats.url": ("nats://f:1", "nats://e:2", "nats://x:3"),
    "idp.url": ("https://f", "https://e", "https://x"),
    "idp.tokenPath": ("/f", "/e", "/x"),
    "idp.issuer": ("https://f/i", "https://e/i", "https://x/i"),
    "health.port": (1, "2", "3"),
    "credentials.dir": ("/", "/tmp", "/usr"),
}


LOADED = {
    # key: what each of FLAGGED's values loads as, written out (not computed by the parser)
    "environment": ("f", "e", "x"),
    "logLevel": ("debug", "error", "critical"),
    "nameSuffix": ("f", "e", "x"),
    "subject": ("s.f", "s.e", "s.x"),
    "queue": ("qf", "qe", "qx"),
    "workers": (2, 3, 4),
    "nats.url": (("nats://f:1",), ("nats://e:2",), ("nats://x:3",)),
    "idp.url": ("https://f", "https://e", "https://x"),
    "idp.tokenPath": ("/f", "/e", "/x"),
    "idp.issuer": ("https://f/i", "https://e/i", "https://x/i"),
    "health.port": (1, 2, 3),
    "credentials.dir": ("/", "/tmp", "/usr"),
}


def test_every_flag_has_a_precedence_case():
    assert {setting.key for setting in SETTINGS if setting.flag} == set(FLAGGED) == set(LOADED)


@pytest.mark.parametrize("key", sorted(FLAGGED))
def test_flags_beat_env_beats_file_beats_default(key, tmp_path):
    setting = BY_KEY[key]
    in_file, in_env, in_flag = FLAGGED[key]
    path = tmp_path / "app.json"
    path.write_text(json.dumps(as_document(key, in_file)))
    file_arg = ["-config", str(path)]
    env = {setting.env[0]: in_env}
    flag = [f"--{setting.flag}", in_flag]

    def loaded(argv: list[str], environ: dict[str, str]) -> Any:
        return value_at(load_config(argv, environ), setting.path)

    from_file, from_env, from_flag = LOADED[key]
    assert loaded([], {}) == setting.default
    assert loaded(file_arg, {}) == from_file
    assert loaded(file_arg, env) == from_env
    assert loaded([*file_arg, *flag], env) == from_flag


def test_env_only_settings_beat_the_file(tmp_path):
    path = tmp_path / "app.json"
    path.write_text(json.dumps({"nats": {"maxReconnect": 3}, "backlog": 7}))
    config = load_config(["-config", str(path)], {"MAX_RECONNECT": "-1"})
    assert (config.nats.max_reconnect, config.backlog) == (-1, 7)


def readme_settings() -> dict[str, tuple[tuple[str, ...], str | None, str | None]]:
    """The README's configuration table: key -> (env names, flag, default as written; None
    for "—" or nothing)."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:5]]
        key = re.fullmatch(r"`([A-Za-z.]+)`", cells[0]) if len(cells) == 4 else None
        if key is None or not re.search(r"`[A-Z_]+`", cells[1]):
            continue  # not a settings row (the request and error tables have no env)
        key, (env, flag, default) = key[1], cells[1:]
        assert key not in rows, f"{key} has two rows in the README"
        flags = re.findall(r"`-([a-z-]+)`", flag)
        shown = re.match(r"`([^`]*)`", default)
        rows[key] = (tuple(re.findall(r"`([A-Z_]+)`", env)), flags[0] if flags else None,
                     shown[1] if shown else None)
    return rows


def as_written(value: Any) -> str | None:
    """A default as the README writes it: ``true``, ``5``, ``0.2``, a comma-joined list."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_the_readme_table_gives_each_settings_env_flag_and_default():
    """The README is the spec a user reads: every setting's row says its environment
    variables, its flag and its default exactly as the code has them, and no row names a
    setting that does not exist."""
    table = readme_settings()
    code = {setting.key: (setting.env, setting.flag,
                          as_written(value_at(Config(), setting.path)))
            for setting in SETTINGS}
    assert sorted(table) == sorted(code)
    for key, (env, flag, default) in code.items():
        assert table[key] == (env, flag, default), key


# --- bounds, at their edges (values from the README and NATS's limits) -------------------


@pytest.mark.parametrize(("env", "value", "path", "expected"), [
    ("HEALTH_PORT", "0", ("health", "port"), 0),                 # "0 picks a free port"
    ("HEALTH_PORT", "65535", ("health", "port"), 65535),         # the last TCP port
    ("HEALTH_PORT", "", ("health", "port"), None),               # set but empty: off
    ("NATS_RECONNECT_BUF_SIZE", "0", ("nats", "reconnect_buffer_size"), 0),  # "with 0, ..."
    ("MAX_RECONNECT", "0", ("nats", "max_reconnect"), 0),        # "0: none"
    ("MAX_RECONNECT", "-1", ("nats", "max_reconnect"), -1),      # "negative: forever"
    ("CACHE_REFRESH_AHEAD", "0", ("cache", "refresh_ahead"), 0.0),   # "0: never"
    ("CACHE_REFRESH_AHEAD", "0.99", ("cache", "refresh_ahead"), 0.99),
    ("CACHE_SHARED_REPLICAS", "5", ("cache", "shared", "replicas"), 5),  # JetStream's most
    ("RECONNECT_WAIT", "0", ("nats", "reconnect_wait"), 0.0),
    ("LOG_LEVEL", "WARN", ("log_level",), "warning"),
    ("ALLOW_RECONNECT", "TRUE", ("nats", "allow_reconnect"), True),
    ("ALLOW_RECONNECT", "1", ("nats", "allow_reconnect"), True),
    ("ALLOW_RECONNECT", "false", ("nats", "allow_reconnect"), False),
    ("ALLOW_RECONNECT", "0", ("nats", "allow_reconnect"), False),
])
def test_values_at_the_edge_of_their_bounds_are_accepted(env, value, path, expected):
    assert value_at(load_config([], {env: value}), path) == expected


def test_an_empty_health_port_is_off_from_every_source(tmp_path):
    """Set but empty means off (the README's default, no listener) in the environment, the
    file and a flag alike."""
    path = tmp_path / "app.json"
    path.write_text(json.dumps({"health": {"port": ""}}))
    assert load_config(["-config", str(path)], {}).health.port is None
    assert load_config(["-health-port", ""], {}).health.port is None
    assert load_config([], {"HEALTH_PORT": ""}).health.port is None


@pytest.mark.parametrize(("env", "value"), [
    ("HEALTH_PORT", "65536"), ("HEALTH_PORT", "-1"),
    ("NATS_RECONNECT_BUF_SIZE", "-1"),
    ("CACHE_REFRESH_AHEAD", "1"), ("CACHE_REFRESH_AHEAD", "1.5"),
    ("CACHE_SHARED_REPLICAS", "6"), ("CACHE_SHARED_REPLICAS", "0"),
    ("RECONNECT_WAIT", "-0.001"), ("IDP_TIMEOUT", "0"), ("IDP_DEADLINE", "0"),
    ("WORKERS", "0"), ("BACKLOG", "-1"),
    ("LOG_LEVEL", "warnings"), ("LOG_LEVEL", "zebra"), ("LOG_LEVEL", "yes"),
    ("ALLOW_RECONNECT", "maybe"), ("ALLOW_RECONNECT", "2"),
])
def test_values_past_their_bounds_are_refused_naming_the_variable(env, value):
    with pytest.raises(ConfigError) as caught:
        load_config([], {env: value})
    assert caught.value.source == f"env {env}"


@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_not_a_number_of_seconds_or_a_count(value, tmp_path):
    for key in ("nats.reconnectWait", "workers", "health.port"):
        path = tmp_path / "app.json"
        path.write_text(json.dumps(as_document(key, value)))
        with pytest.raises(ConfigError) as caught:
            load_config(["-config", str(path)], {})
        assert caught.value.field == key


@pytest.mark.parametrize(("env", "url"), [
    ("NATS_URL", "nats://user@h:4222"),          # a user alone
    ("NATS_URL", "nats://:pa55-only@h:4222"),    # a password alone
    ("IDP_URL", "https://user@idp.example"),
    ("IDP_URL", "https://:pa55-only@idp.example"),
])
def test_any_credential_in_a_url_is_refused_without_quoting_it(env, url):
    """README: credentials inside a NATS URL are refused (and an IdP URL's too)."""
    with pytest.raises(ConfigError) as caught:
        load_config([], {env: url})
    assert "pa55-only" not in str(caught.value) and "user@" not in str(caught.value)


# --- NATS credentials files -------------------------------------------------------------------



def _user_seed() -> str:
    return new_user().seed


@pytest.mark.parametrize(("key", "variable"), [("nats.credsFile", "NATS_CREDS"),
                                               ("nats.nkeyFile", "NATS_NKEY")])
def test_a_malformed_nats_credentials_file_fails_at_load_naming_setting_and_source(
        key, variable, tmp_path):
    seed = _user_seed()
    path = tmp_path / "broken"
    seed_block = f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    path.write_text(seed[:-3] + "AAA\n" if key == "nats.nkeyFile" else seed_block)
    with pytest.raises(ConfigError) as from_env:
        load_config([], {variable: str(path)})
    assert (from_env.value.field, from_env.value.source) == (key, f"env {variable}")
    config_file = tmp_path / "app.json"
    config_file.write_text(json.dumps(as_document(key, str(path))))
    with pytest.raises(ConfigError) as from_file:
        load_config(["-config", str(config_file)], {})
    assert from_file.value.source == f"file {config_file}"
    for error in (from_env.value, from_file.value):
        assert str(path) in str(error)
        assert seed not in str(error) and seed[:20] not in str(error)


def test_a_good_nkey_file_loads_and_creds_and_nkey_do_not_go_together(tmp_path):
    path = tmp_path / "user.nk"
    path.write_text(_user_seed() + "\n")
    assert load_config([], {"NATS_NKEY": str(path)}).nats.nkey_file == str(path)
    operator = OperatorMode()
    creds, _user = operator.user_creds(tmp_path, "worker")
    assert load_config([], {"NATS_CREDS": str(creds)}).nats.creds_file == str(creds)
    with pytest.raises(ConfigError, match="not both") as caught:
        NatsConfig(nkey_file=str(path), creds_file=str(creds))
    assert caught.value.field == "nats.nkeyFile"


@pytest.mark.parametrize(("argv", "env", "source"), [
    (["-nats-url", "nats://\udcff:4222"], {}, "flag -nats-url"),
    ([], {"NATS_URL": "nats://\udcff:4222"}, "env NATS_URL"),
])
def test_a_value_that_was_not_utf8_is_refused_naming_its_source(argv, env, source):
    """argv and the environment are decoded with surrogateescape: bytes that were not UTF-8
    become lone surrogates, which no setting may hold."""
    with pytest.raises(ConfigError) as caught:
        load_config(argv, env)
    assert (caught.value.field, caught.value.source) == ("nats.url", source)
    assert "not valid UTF-8" in str(caught.value)
