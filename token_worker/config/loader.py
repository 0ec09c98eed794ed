"""Loading the config: every setting derived from the types (:data:`SETTINGS`), and
:func:`load_config`, which reads defaults < JSON file < environment < flags, names the
source of every bad value, and builds the types.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from token_worker.config.declare import CODE, SECTION_KEYS, Setting, layout
from token_worker.config.sections import Config
from token_worker.errors import ConfigError
from token_worker.version import __version__

T = TypeVar("T")

# --- the settings, derived from the types ----------------------------------------------------


def _collect(cls: type, path: tuple[str, ...], prefix: str) -> Iterator[Setting]:
    """Every setting under ``cls``, in field order, with its path filled in."""
    for name, spec in layout(cls):
        if isinstance(spec, Setting):
            if spec.key.rpartition(".")[0] != prefix:
                raise TypeError(f"setting {spec.key!r} is declared in {cls.__name__}, whose "
                                f"keys start with {prefix + '.' if prefix else 'no section'}")
            yield replace(spec, path=(*path, name))
        else:
            section_key = f"{prefix}.{name}" if prefix else name
            SECTION_KEYS[spec] = section_key
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
_SECTIONS = set(SECTION_KEYS.values())


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
        description="Serve OAuth2 client-credentials tokens over NATS request-reply. Every "
                    "setting also comes from a JSON file (-config) and the environment; "
                    "flags win, then the environment, then the file.",
        allow_abbrev=False,
    )
    parser.add_argument("-version", "--version", action="version",
                        version=f"%(prog)s {__version__}")
    parser.add_argument("-config", "--config", metavar="PATH",
                        help="JSON config file (default: none)")
    for setting_ in SETTINGS:
        if setting_.flag:
            parser.add_argument(
                f"-{setting_.flag}", f"--{setting_.flag}", dest=setting_.flag,
                help=flag_help(setting_),
            )
    return parser


def flag_help(setting_: Setting) -> str:
    """A flag's help: what it sets, its environment variables and its default."""
    default = setting_.default
    if isinstance(default, tuple):
        default = ",".join(str(part) for part in default)
    shown = "unset" if default is None else str(default)
    env = f"env {', '.join(setting_.env)}; " if setting_.env else ""
    return f"{setting_.help} ({env}default: {shown})"


class _JsonObject(dict[str, Any]):
    """A JSON object as read, remembering the keys it gives more than once (``json`` keeps
    the last silently: an ``"idp"`` section given twice would drop the first)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        names = [name for name, _ in pairs]
        self.repeated = sorted({name for name in names if names.count(name) > 1})


def _read_file(path: str) -> dict[str, tuple[Any, str]]:
    source = f"file {path}"
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle, object_pairs_hook=_JsonObject)
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
    repeated: list[str] = getattr(node, "repeated", [])
    if repeated:
        raise ConfigError(prefix + repeated[0], source, "given more than once in the file "
                          "(a JSON object must not repeat a key: one value would be lost)")
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
        if isinstance(value, str) and not _is_utf8(value):  # argv and env: surrogateescape
            raise ConfigError(key, source, "is not valid UTF-8")
        values[setting_.path] = setting_.read(value, source)
    try:
        return _construct(Config, (), values)
    except ConfigError as error:
        if error.source != CODE:
            raise
        raise ConfigError(error.field, _source_of(error.field, raw), error.problem) from None


def _is_utf8(value: str) -> bool:
    """False for text that came from bytes that were not UTF-8 (lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _construct(cls: type[T], path: tuple[str, ...], values: Mapping[tuple[str, ...], Any]) -> T:
    """An instance of ``cls`` with the parsed values under ``path`` (defaults elsewhere)."""
    kwargs: dict[str, Any] = {}
    for name, spec in layout(cls):
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
