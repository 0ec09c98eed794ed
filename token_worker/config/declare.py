"""Declaring settings: :func:`setting` makes the dataclass field a setting fills, and
:class:`Section`, the base of every config type, validates each field however the object
was built (read from a source or given in code), naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

from token_worker.errors import ConfigError

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
    """Declare a setting as the dataclass field it fills (see :mod:`token_worker.config`)."""
    spec = Setting(key=key, parse=parse, default=default,
                   env=(env,) if isinstance(env, str) else env, flag=flag, secret=secret,
                   help=help)
    return field(default=default, metadata={_SETTING: spec})


_LAYOUTS: dict[type, tuple[tuple[str, Setting | type], ...]] = {}


def layout(cls: type) -> tuple[tuple[str, Setting | type], ...]:
    """Each field of a config type with its :class:`Setting`, or the type of its section."""
    if cls not in _LAYOUTS:
        _LAYOUTS[cls] = _read_layout(cls)
    return _LAYOUTS[cls]


def _read_layout(cls: type) -> tuple[tuple[str, Setting | type], ...]:
    found: list[tuple[str, Setting | type]] = []
    for item in fields(cls):
        spec = item.metadata.get(_SETTING)
        factory = item.default_factory
        if isinstance(spec, Setting):
            found.append((item.name, spec))
        elif factory is not MISSING and isinstance(factory, type) and is_dataclass(factory):
            found.append((item.name, factory))
        else:
            raise TypeError(f"{cls.__name__}.{item.name} is neither a setting(...) nor a "
                            "section (field(default_factory=SomeConfig))")
    return tuple(found)


SECTION_KEYS: dict[type, str] = {}
"""JSON path of each section type (``TlsConfig``: ``nats.tls``), filled from :class:`Config`
by :mod:`~token_worker.config.loader` (imported with the package)."""


class Section:
    """Base of the config types: validates every field however the object was built."""

    def __post_init__(self) -> None:
        for name, spec in layout(type(self)):
            value = getattr(self, name)
            if isinstance(spec, Setting):
                typed = spec.read(value, CODE)
                if not (type(typed) is type(value) and typed == value):
                    object.__setattr__(self, name, typed)  # normalised, e.g. "WARN" -> "warning"
            elif not isinstance(value, spec):
                raise ConfigError(SECTION_KEYS.get(spec, name), CODE,
                                  f"must be a {spec.__name__}, got {type(value).__name__}")
        self._check()

    def _check(self) -> None:
        """Rules between fields of this section; raise :meth:`_invalid` errors."""

    def _key(self, name: str) -> str:
        """The JSON key of this section's field ``name``."""
        spec = dict(layout(type(self)))[name]
        return spec.key if isinstance(spec, Setting) else SECTION_KEYS[spec]

    def _invalid(self, name: str | None, problem: str) -> ConfigError:
        """An error naming field ``name``, or the section itself for ``None``."""
        key = SECTION_KEYS[type(self)] if name is None else self._key(name)
        return ConfigError(key, CODE, problem)
