"""The responders under test, each in its own process (its own GIL, as in production)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.integration.processes import IdpServer, NatsServer

ROOT = Path(__file__).resolve().parent.parent.parent
BASELINE = Path(__file__).resolve().parent / "baseline_worker.py"


class WorkerProcess:
    """A responder process; its CPU time and memory are read with psutil."""

    def __init__(self, command: Sequence[str], env: dict[str, str]) -> None:
        import psutil

        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(list(command), env={**os.environ, **env},
                                        stdout=subprocess.PIPE, stderr=self.log, text=True)
        self._ps = psutil.Process(self.process.pid)

    def stderr_tail(self) -> str:
        self.log.seek(0)
        return "".join(self.log.readlines()[-5:])

    def rss_mib(self) -> float:
        return float(self._ps.memory_info().rss) / 2**20

    def cpu_seconds(self) -> float:
        """User and system CPU of the responder's process (every thread)."""
        times = self._ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout:
            self.process.stdout.close()
        self.log.close()


def token_worker(nats: NatsServer, idp: IdpServer, **env: str) -> WorkerProcess:
    """``bin/token-worker``, as in production; ``env`` sets its configuration."""
    settings = {"NATS_URL": nats.url, "IDP_URL": idp.url, "LOG_LEVEL": "info",
                "WORKER_NAME_SUFFIX": "bench", **env}
    return WorkerProcess([sys.executable, str(ROOT / "bin" / "token-worker")], settings)


def baseline_worker(nats: NatsServer, idp: IdpServer, subject: str = "token.request"
                    ) -> WorkerProcess:
    """The hand-written nats-py worker (baseline_worker.py)."""
    return WorkerProcess([sys.executable, str(BASELINE), nats.url, idp.token_url, subject],
                         {})


def null_responder(binary: str, nats: NatsServer, subject: str) -> WorkerProcess:
    """The C null responder: a fixed reply, no work."""
    return WorkerProcess([binary, str(nats.port), subject], {})


def go_worker(binary: str, nats: NatsServer, idp: IdpServer, subject: str) -> WorkerProcess:
    """The Go cached worker (benchmarks/go/cachedworker): the same job in compiled code."""
    return WorkerProcess([binary, "-url", nats.url, "-subject", subject,
                          "-token-url", idp.token_url], {})
