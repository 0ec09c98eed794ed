"""Configuration: precedence, the original's names, and errors that name field and source."""

from __future__ import annotations

import json

import pytest

from token_worker import ConfigError, client_name, load_config
from token_worker.config import describe_settings

GUIDE_CONFIG = {
    "environment": "production",
    "logLevel": "info",
    "nats": {"url": "nats://nats-cluster.nats.svc.cluster.local:4222", "allowReconnect": True,
             "maxReconnect": 10, "reconnectWait": 5},
    "idp": {"url": "https://idp.example.com", "timeout": 30},
}


@pytest.fixture
def config_file(tmp_path):
    def write(document) -> str:
        path = tmp_path / "app.json"
        path.write_text(document if isinstance(document, str) else json.dumps(document))
        return str(path)
    return write


def test_defaults_are_the_originals():
    config = load_config([], {})
    assert config.environment == "dev"
    assert config.log_level == "info"
    assert config.nats.urls == ("nats://localhost:4222",)
    assert (config.nats.allow_reconnect, config.nats.max_reconnect) == (True, 10)
    assert config.nats.reconnect_wait == 5
    assert (config.subject, config.queue) == ("token.request", "token-workers")
    assert config.idp.token_url == (
        "https://idp.example.com/realms/phoenix/protocol/openid-connect/token")
    assert config.idp.timeout == 10


def test_the_guides_config_map_loads(config_file):
    config = load_config(["-config", config_file(GUIDE_CONFIG)], {})
    assert config.environment == "production"
    assert config.nats.urls == ("nats://nats-cluster.nats.svc.cluster.local:4222",)
    assert config.idp.timeout == 30


def test_precedence_defaults_file_env_flags(config_file):
    path = config_file({"queue": "from-file", "idp": {"url": "https://file.example"},
                        "logLevel": "debug", "nats": {"maxReconnect": 3}})
    env = {"QUEUE_GROUP": "from-env", "IDP_URL": "https://env.example", "MAX_RECONNECT": "7"}
    config = load_config(["--config", path, "-queue", "from-flag"], env)
    assert config.queue == "from-flag"           # flag beats env and file
    assert config.idp.url == "https://env.example"  # env beats file
    assert config.nats.max_reconnect == 7
    assert config.log_level == "debug"          # file beats default


def test_every_env_variable_of_the_original_is_read():
    env = {"NATS_URL": "nats://a:1,nats://b:2", "NATS_USER": "u", "NATS_PASS": "p",
           "NATS_TOKEN": "t", "APP_LOG_LEVEL": "warning", "APP_ENV": "staging",
           "MAX_RECONNECT": "-1", "RECONNECT_WAIT": "0.5", "QUEUE_GROUP": "q",
           "WORKER_NAME_SUFFIX": "w1", "TOKEN_SUBJECT": "tokens.get",
           "IDP_URL": "http://127.0.0.1:8080", "IDP_TOKEN_PATH": "/oauth/token"}
    config = load_config([], env)
    assert config.nats.urls == ("nats://a:1", "nats://b:2")
    assert config.nats.username == "u"
    assert config.nats.password is not None and config.nats.password.reveal() == "p"
    assert config.nats.token is not None and config.nats.token.reveal() == "t"
    assert (config.log_level, config.environment) == ("warning", "staging")
    assert (config.nats.max_reconnect, config.nats.reconnect_wait) == (-1, 0.5)
    assert (config.queue, config.name_suffix, config.subject) == ("q", "w1", "tokens.get")
    assert config.idp.token_url == "http://127.0.0.1:8080/oauth/token"
    assert load_config([], {"LOG_LEVEL": "error", "APP_LOG_LEVEL": "debug"}).log_level == "error"


def test_flags_take_one_or_two_dashes():
    for dash in ("-", "--"):
        config = load_config([f"{dash}queue", "q", f"{dash}name-suffix", "pod-1",
                              f"{dash}idp-url", "http://127.0.0.1:1",
                              f"{dash}idp-token-path", "/t"], {})
        assert (config.queue, config.name_suffix) == ("q", "pod-1")
        assert config.idp.token_url == "http://127.0.0.1:1/t"


@pytest.mark.parametrize(
    ("argv", "env", "document", "field", "source"),
    [
        ([], {"RECONNECT_WAIT": "-1"}, None, "nats.reconnectWait", "env RECONNECT_WAIT"),
        ([], {"MAX_RECONNECT": "ten"}, None, "nats.maxReconnect", "env MAX_RECONNECT"),
        ([], {"LOG_LEVEL": "loud"}, None, "logLevel", "env LOG_LEVEL"),
        (["-idp-url", "ftp://x"], {}, None, "idp.url", "flag -idp-url"),
        (["-idp-url", "not a url"], {}, None, "idp.url", "flag -idp-url"),
        (["-idp-token-path", "no-slash"], {}, None, "idp.tokenPath", "flag -idp-token-path"),
        ([], {}, {"nats": {"reconnectWait": "soon"}}, "nats.reconnectWait", "file"),
        ([], {}, {"nats": {"maxReconnect": 2.5}}, "nats.maxReconnect", "file"),
        ([], {}, {"nats": {"allowReconnect": "perhaps"}}, "nats.allowReconnect", "file"),
        ([], {}, {"idp": {"timeout": 0}}, "idp.timeout", "file"),
        ([], {}, {"nats": {"url": "http://x:4222"}}, "nats.url", "file"),
        ([], {}, {"nats": {"reconectWait": 5}}, "nats.reconectWait", "file"),
        ([], {}, {"nats": "nats://x"}, "nats", "file"),
        ([], {}, {"workers": 0}, "workers", "file"),
        ([], {"IDP_AUTH_METHOD": "private_key_jwt"}, None, "idp.authMethod",
         "env IDP_AUTH_METHOD"),
    ],
)
def test_invalid_values_name_the_field_and_the_source(argv, env, document, field, source,
                                                      config_file):
    if document is not None:
        argv = ["-config", config_file(document), *argv]
    with pytest.raises(ConfigError) as caught:
        load_config(argv, env)
    assert caught.value.field == field
    assert caught.value.source.startswith(source)
    if source == "file":
        assert caught.value.source.endswith("app.json")
    assert field in str(caught.value) and source in str(caught.value)


def test_unreadable_and_invalid_files_are_config_errors(tmp_path, config_file):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(["-config", str(tmp_path / "missing.json")], {})
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(["-config", config_file("{nope")], {})


@pytest.mark.parametrize(("text", "key"), [
    ('{"idp": {"url": "https://a.example"}, "idp": {"timeout": 3}}', "idp"),
    ('{"idp": {"url": "https://a.example", "url": "https://b.example"}}', "idp.url"),
    ('{"nats": {"tls": {"caFile": "a.pem", "caFile": "b.pem"}}}', "nats.tls.caFile"),
    ('{"workers": 4, "workers": 4}', "workers"),
])
def test_a_key_given_twice_is_refused_naming_the_key_and_the_file(text, key, tmp_path):
    path = tmp_path / "app.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(["-config", str(path)], {})
    assert (caught.value.field, caught.value.source) == (key, f"file {path}")
    assert "given more than once" in caught.value.problem


def test_secrets_never_appear_in_errors_or_reprs():
    with pytest.raises(ConfigError) as caught:
        load_config([], {"NATS_URL": "nats://user:hunter2-secret@x:4222"})
    assert "hunter2-secret" not in str(caught.value)
    config = load_config([], {"NATS_USER": "u", "NATS_PASS": "hunter2-secret",
                              "NATS_TOKEN": "tok-secret-9"})
    assert "hunter2-secret" not in repr(config)
    assert "tok-secret-9" not in repr(config)


def test_password_without_user_is_refused():
    with pytest.raises(ConfigError, match=r"needs nats\.username"):
        load_config([], {"NATS_PASS": "p"})


def test_settings_table_covers_every_setting():
    rows = describe_settings()
    keys = {row["key"] for row in rows}
    assert {"nats.url", "nats.maxReconnect", "idp.tokenPath", "queue"} <= keys
    assert all(row["env"] or row["flag"] for row in rows)


@pytest.mark.parametrize(
    ("suffix", "env", "host", "expected"),
    [
        ("flag-suffix", {"WORKER_NAME_SUFFIX": "e", "POD_NAME": "p"}, "h",
         "Token Worker-flag-suffix"),
        (None, {"WORKER_NAME_SUFFIX": "env-suffix", "POD_NAME": "p"}, "h",
         "Token Worker-env-suffix"),
        (None, {"POD_NAME": "token-worker-5d4f9b8c7d"}, "h",
         "Token Worker-token-worker-5d4f9b8c7d"),
        (None, {}, "node-a", "Token Worker-node-a"),
        ("  ", {"POD_NAME": " "}, "", "Token Worker"),
    ],
)
def test_client_name_suffix_order(suffix, env, host, expected):
    assert client_name(suffix, environ=env, hostname=lambda: host) == expected
