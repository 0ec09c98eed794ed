"""Helpers shared by test modules (test modules never import each other)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from tests.conftest import CAPTURED_LOG_LINES
from tests.servers import ROOT

SCRIPT = ROOT / "bin" / "token-worker"


def wait_until(predicate: Callable[[], object], timeout: float = 10.0,
               what: str = "condition") -> float:
    """Poll ``predicate``; return the seconds it took, fail the test after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - started


class WorkerProcess:
    """``bin/token-worker`` in a child process; its stderr (JSON logs) is collected."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("POD_NAME", "WORKER_NAME_SUFFIX")}
        full_env.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args], env=full_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            CAPTURED_LOG_LINES.append(line.rstrip("\n"))

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def wait_for_log(self, message: str, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.records():
                if record.get("message") == message:
                    return record
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        pytest.fail(f"no log line {message!r}; got: {self.lines[-10:]}")

    def finish(self, timeout: float = 15) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
