"""Helpers shared by both test layers (test modules never import each other). Light: no
nats-py, no server, no process."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["resident_bytes", "spy_on_signal_handlers", "wait_until"]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0,
               what: str = "condition") -> float:
    """Poll ``predicate``; return the seconds it took, fail the test after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - started


def spy_on_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap every signal handler installed from now on, and return the list where each
    lock it takes (and each call into ``threading`` or ``logging``) is recorded: a handler
    that takes a lock the interrupted main thread holds deadlocks the process."""
    taken: list[str] = []

    def profiler(frame: Any, event: str, arg: Any) -> None:
        filename = frame.f_code.co_filename
        if event == "c_call" and getattr(arg, "__name__", "") in ("acquire", "__enter__"):
            taken.append(repr(arg))
        elif event == "call" and (filename.endswith("threading.py")
                                  or filename.endswith(os.path.join("logging", "__init__.py"))):
            taken.append(f"{filename}:{frame.f_code.co_name}")

    def wrap(handler: Callable[..., Any]) -> Callable[..., Any]:
        def spy(signum: int, frame: Any) -> None:
            sys.setprofile(profiler)
            try:
                handler(signum, frame)
            finally:
                sys.setprofile(None)
        return spy

    real_signal = signal.signal
    monkeypatch.setattr(signal, "signal", lambda sig, handler: real_signal(
        sig, wrap(handler) if callable(handler) else handler))
    return taken


def resident_bytes() -> int:
    """This process's resident memory, as psutil's ``memory_info().rss`` reads it on Linux
    (``/proc/self/statm``), without psutil: the unit layer does not need it."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
