"""One measured run (a responder under one load) and the table row it prints."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchkit.pipelined import generate
from benchkit.responders import WorkerProcess
from benchkit.workload import Load, payloads
from tests.integration.processes import IdpServer, NatsServer

HEADER = ("| responder | concurrency | req/s | p50 ms | p99 ms | IdP calls | errors | "
          "responder CPU | responder CPU µs/req | generator CPU µs/req | nats-server CPU µs/req |"
          "\n|---|---|---|---|---|---|---|---|---|---|---|")


@dataclass
class Result:
    requests: int
    load: Load
    idp_calls: int
    worker_cpu: float
    server_cpu: float
    _ordered: list[float] = field(default_factory=list, init=False, repr=False)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def seconds(self) -> float:
        return max(self.load.seconds, 1e-9)  # 0 when nothing was answered

    @property
    def cpu_per_request(self) -> float:
        """Responder CPU microseconds per request."""
        return self.worker_cpu / self.requests * 1e6

    @property
    def generator_cpu_per_request(self) -> float:
        return self.load.generator_cpu / self.requests * 1e6

    def percentile(self, share: float) -> float:
        """Latency in milliseconds."""
        if not self._ordered:
            self._ordered = sorted(self.load.latencies) or [float("nan")]
        ordered = self._ordered
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000

    def row(self, label: str, concurrency: int) -> str:
        return (f"| {label} | {concurrency} | {self.rate:,.0f} | {self.percentile(0.5):.2f} | "
                f"{self.percentile(0.99):.2f} | {self.idp_calls} | {self.load.errors} | "
                f"{self.worker_cpu / self.seconds * 100:.0f}% | "
                f"{self.cpu_per_request:.1f} | {self.generator_cpu_per_request:.1f} | "
                f"{self.server_cpu / self.requests * 1e6:.1f} |")


@dataclass
class Bench:
    """The shared nats-server and IdP, and how runs against them are measured."""

    nats: NatsServer
    idp: IdpServer
    generators: int
    """Processes of the pipelined generator."""

    def measure(self, worker: WorkerProcess, requests: int, run: Callable[[], Load],
                idp: IdpServer | None = None) -> Result:
        """``run`` sends ``requests`` requests to ``worker``; the responder's, the IdP's and
        nats-server's share of the work is read around it."""
        idp = idp or self.idp
        calls_before, cpu_before = idp.token_calls(), worker.cpu_seconds()
        server_before = self.server_cpu_seconds()
        load = run()
        return Result(requests, load, idp.token_calls() - calls_before,
                      worker.cpu_seconds() - cpu_before,
                      self.server_cpu_seconds() - server_before)

    def pipelined(self, worker: WorkerProcess, bodies: list[bytes], concurrency: int,
                  subject: str = "token.request", idp: IdpServer | None = None) -> Result:
        """A run of the pipelined generator (pipelined.py)."""
        return self.measure(worker, len(bodies), lambda: generate(
            self.nats.port, bodies, concurrency, subject, self.generators), idp)

    def server_cpu_seconds(self) -> float:
        import psutil

        assert self.nats.process is not None
        times = psutil.Process(self.nats.process.pid).cpu_times()
        return float(times.user + times.system)

    def wait_serving(self, worker: WorkerProcess, subject: str = "token.request") -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                raise RuntimeError(f"{worker.process.args[0]} exited at start with "
                                   f"{worker.process.returncode}:\n{worker.stderr_tail()}")
            if not generate(self.nats.port, payloads(1), 1, subject, 1).errors:
                return
            time.sleep(0.2)
        raise RuntimeError("responder never answered")
