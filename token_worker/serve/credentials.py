"""Named credentials: client ids and what proves them (a secret, a key, a certificate) live
in the worker's Secret, not on the bus.

The directory holds one folder per credential, exactly as the kubelet mounts a Secret (or
a projected volume of several Secrets) whose items have paths ``<name>/client_id``::

    <dir>/..2026_11_30_02_00_00.123456789/orders/client_id   the real files
    <dir>/..data -> ..2026_11_30_02_00_00.123456789           swapped atomically on update
    <dir>/orders -> ..data/orders                              what a reader sees

What one folder holds and how it is read: :mod:`token_worker.serve.credential_folder`
(:data:`~token_worker.serve.credential_folder.FILES`). Dot-entries are the kubelet's,
never credentials.

A background thread looks at the directory every ``interval`` seconds (with ``..data``,
one ``readlink`` unless it moved) and swaps in a new immutable snapshot, so
:meth:`CredentialStore.get` on the hot path is one dict lookup with no I/O and no lock.
A snapshot is one consistent set: with ``..data`` everything is read from the one
timestamped directory it pointed to, and kept only if ``..data`` still points there
afterwards (the kubelet writes a new directory, then swaps); without ``..data`` (a plain
directory) the set is read until two reads in a row agree.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from token_worker.errors import CredentialsDirError, InvalidCredentialName
from token_worker.serve.credential_folder import Credential, read_credential

logger = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
"""A credential name: one NATS subject token, no wildcard, no dot."""
DATA_TARGET_PATTERN = re.compile(r"\.\.[^/\x00]+")
"""What ``..data`` may point to: one kubelet ``..<timestamp>`` entry beside it."""
DATA_LINK = "..data"
"""The kubelet's symlink to the current timestamped directory."""
RELOAD_INTERVAL = 1.0
"""Seconds between two looks at the directory: a rotation is used within about this."""
STABLE_READS = 5
RACY_NS = 2_000_000_000
"""A plain directory touched this recently is always read in full: a same-size rewrite
within one file-system timestamp tick would leave its signature unchanged."""
"""Attempts at one consistent read before keeping the previous snapshot for this round."""


def is_valid_name(name: str) -> bool:
    """Whether ``name`` may name a credential (and be a subject token)."""
    return NAME_PATTERN.fullmatch(name) is not None


def name_from_subject(subject: str, prefix: str) -> str:
    """The credential a named request asks for: the one subject token after ``prefix``
    (``token.named.orders`` -> ``orders``). Only the subject decides; nothing in the body
    can. Raises InvalidCredentialName (answer ``invalid_request``) for anything else."""
    head, dot, name = subject.rpartition(".")
    if not dot or head != prefix or not is_valid_name(name):
        raise InvalidCredentialName(
            f"subject {subject[:200]!r} does not name a credential as {prefix}.<name> "
            "with <name> in [A-Za-z0-9_-]")
    return name


class _Torn(Exception):
    """The directory changed under a read; read again."""


class _BadDataLink(Exception):
    """``..data`` points somewhere the kubelet never would (outside the directory)."""


@dataclass(frozen=True)
class Snapshot:
    """One consistent read of the directory."""

    credentials: Mapping[str, Credential]
    problems: Mapping[str, str]
    """Entries that are not usable credentials, with why (never a value)."""


def _read_set(root: Path, base: str) -> Snapshot:
    """Every credential under ``root`` (a timestamped dir or a plain one); every value must
    resolve inside ``base``, the resolved credentials directory."""
    credentials: dict[str, Credential] = {}
    problems: dict[str, str] = {}
    try:
        entries = sorted(os.listdir(root))
    except FileNotFoundError:
        raise _Torn() from None
    for entry in entries:
        if entry.startswith("."):
            continue
        folder = root / entry
        if not is_valid_name(entry):
            problems[entry] = "the name is not [A-Za-z0-9_-]+"
            continue
        if not folder.is_dir():
            problems[entry] = "not a folder (expected <name>/client_id, <name>/client_secret)"
            continue
        try:
            credentials[entry] = read_credential(entry, folder, base)
        except ValueError as error:
            problems[entry] = str(error)
        except OSError as error:
            problems[entry] = f"cannot be read ({error.strerror})"
    return Snapshot(credentials, problems)


def data_target(directory: Path) -> str | None:
    """Where the kubelet's ``..data`` points now, or None for a plain directory. Raises
    :class:`_BadDataLink` unless it names one ``..<name>`` directory beside it (the
    kubelet's layout), so it can never lead outside the directory."""
    link = directory / DATA_LINK
    if not link.is_symlink():
        return None
    target = os.readlink(link)
    if DATA_TARGET_PATTERN.fullmatch(target) is None or target == DATA_LINK:
        raise _BadDataLink(f"{DATA_LINK} must point to a ..<name> entry inside the directory")
    try:
        mode = os.lstat(directory / target).st_mode
    except FileNotFoundError:
        return target  # swapped under us: the caller reads again
    if not stat.S_ISDIR(mode):
        raise _BadDataLink(f"{DATA_LINK} must point to a ..<name> directory, not a link "
                           "or a file")
    return target


Signature = tuple[tuple[str, int, int, int, int, int], ...]


def plain_signature(directory: Path) -> Signature | None:
    """A cheap fingerprint of a plain directory (names, and mode, inode, size, mtime and
    ctime of every folder and file, symlinks followed), so an unchanged one is not read
    again every round. None, meaning "read it", when anything is unreadable or was modified
    within :data:`RACY_NS` (a later write then lands in a newer timestamp tick)."""
    horizon = time.time_ns() - RACY_NS
    items: list[tuple[str, int, int, int, int, int]] = []

    def add(name: str, path: Path) -> int:
        info = os.stat(path)
        if info.st_mtime_ns > horizon:
            raise _Torn()
        items.append((name, info.st_mode, info.st_ino, info.st_size, info.st_mtime_ns,
                      info.st_ctime_ns))
        return info.st_mode
    try:
        add("", directory)
        for entry in sorted(os.listdir(directory)):
            if entry.startswith("."):
                continue
            if stat.S_ISDIR(add(entry, directory / entry)):
                for name in sorted(os.listdir(directory / entry)):
                    add(f"{entry}/{name}", directory / entry / name)
    except (OSError, _Torn):
        return None
    return tuple(items)


def read_directory(directory: Path) -> tuple[Snapshot, str | None]:
    """One consistent snapshot of ``directory`` and the ``..data`` target it was read from
    (None for a plain directory); raises OSError if it is unreadable and :class:`_Torn` if
    it kept changing for :data:`STABLE_READS` attempts, :class:`_BadDataLink` when
    ``..data`` points outside."""
    base = os.path.realpath(directory)
    for _ in range(STABLE_READS):
        target = data_target(directory)
        if target is not None:
            try:
                snapshot = _read_set(directory / target, base)
            except _Torn:
                continue
            if data_target(directory) == target:
                return snapshot, target
        else:
            first = _read_set(directory, base)
            if first == _read_set(directory, base):
                return first, None
    raise _Torn()


class CredentialStore:
    """Named credentials from a directory, reloaded in the background.

    ``get`` never does I/O. ``close`` stops the reload thread. Construct it at
    config-load time (``start=False`` defers the thread to :meth:`start`): a missing or
    unreadable directory raises CredentialsDirError. ``on_change(event, name)`` is called
    on the reload thread for each ``added``/``changed``/``removed`` credential.
    """

    def __init__(self, directory: Path | str, *, interval: float = RELOAD_INTERVAL,
                 start: bool = True,
                 on_change: Callable[[str, str], None] | None = None) -> None:
        self.directory = Path(directory)
        self.interval = interval
        self._listeners = [on_change] if on_change is not None else []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reloading = threading.Lock()
        if not self.directory.is_dir():
            raise CredentialsDirError(self.directory, "is not a directory")
        self._target: str | None = None
        self._failure: str | None = None
        self._signature: Signature | None = None
        """The plain directory's fingerprint as of the last read; None reads it again."""
        """The last reload failure logged, so a lasting one is logged once."""
        try:
            first, self._target = read_directory(self.directory)
        except PermissionError:
            raise CredentialsDirError(self.directory, "is not readable") from None
        except _BadDataLink as error:
            raise CredentialsDirError(self.directory, str(error)) from None
        except (OSError, _Torn):
            raise CredentialsDirError(self.directory, "could not be read consistently") from None
        self._snapshot = Snapshot({}, {})
        self._apply(first)
        if start:
            self.start()

    def listen(self, on_change: Callable[[str, str], None]) -> None:
        """Also call ``on_change(event, name)`` for each change (on the reload thread)."""
        self._listeners.append(on_change)

    def start(self) -> None:
        """Start the reload thread (done by the constructor unless ``start=False``)."""
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="credentials-reload",
                                            daemon=True)
            self._thread.start()

    def get(self, name: str) -> Credential | None:
        """The credential ``name``, or None when there is none (``unknown_credential``).

        Raises InvalidCredentialName for a name outside ``[A-Za-z0-9_-]+``.
        """
        if not is_valid_name(name):
            raise InvalidCredentialName(f"credential name {name[:64]!r} is not [A-Za-z0-9_-]+")
        return self._snapshot.credentials.get(name)

    def names(self) -> list[str]:
        """The names of the usable credentials, sorted (for logs and discovery)."""
        return sorted(self._snapshot.credentials)

    def problems(self) -> dict[str, str]:
        """Entries that are not usable credentials, with why (no values)."""
        return dict(self._snapshot.problems)

    def reload(self) -> bool:
        """Look at the directory now; return whether anything changed. With ``..data``
        only the link is read unless it moved. Keeps the previous snapshot (and logs a
        warning, once while the same failure lasts) when the directory cannot be read
        consistently or ``..data`` points outside it. A plain directory whose
        :func:`plain_signature` is unchanged is not read again. Safe to call from any
        thread (SIGHUP reloads from the main thread): one reload at a time."""
        with self._reloading:
            return self._reload()

    def _reload(self) -> bool:
        try:
            target = data_target(self.directory)
            if self._target is not None and target == self._target:
                self._failure = None
                return False
            signature = plain_signature(self.directory) if target is None else None
            if signature is not None and signature == self._signature:
                return False
            snapshot, self._target = read_directory(self.directory)
            self._signature = signature if self._target is None else None
        except (OSError, _Torn, _BadDataLink) as error:
            reason = str(error) if isinstance(error, _BadDataLink) else type(error).__name__
            if reason != self._failure:
                self._failure = reason
                logger.warning("credentials directory not reloaded, keeping the previous set",
                               extra={"directory": str(self.directory), "reason": reason})
            return False
        self._failure = None
        return self._apply(snapshot)

    def close(self) -> None:
        """Stop the reload thread (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reload()
            except Exception:  # the thread must survive anything; the old set stays
                logger.exception("credentials reload failed")

    def _apply(self, new: Snapshot) -> bool:
        old = self._snapshot
        changes: list[tuple[str, str]] = []
        for name in sorted(set(old.credentials) | set(new.credentials)):
            before, after = old.credentials.get(name), new.credentials.get(name)
            if before is None and after is not None:
                changes.append(("added", name))
            elif before is not None and after is None:
                changes.append(("removed", name))
            elif before != after:
                changes.append(("changed", name))
        self._snapshot = new
        for event, name in changes:
            logger.info("credential %s", event, extra={"credential": name})
            for listener in self._listeners:
                listener(event, name)
        for name, problem in sorted(new.problems.items()):
            if old.problems.get(name) != problem:
                logger.warning("credential not usable", extra={"credential": name,
                                                               "problem": problem})
        return bool(changes) or old.problems != new.problems

    def __repr__(self) -> str:
        return f"CredentialStore(directory={str(self.directory)!r}, names={self.names()!r})"
