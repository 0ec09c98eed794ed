"""The closed-loop load generator: benchmarks/go/closedloop, a compiled nats.go program.

Independent requesters, each waiting for its reply before it sends its next request (as
services do), spread over a few NATS connections; requests cycle over the 100 clients.
Its own CPU over the run (getrusage) comes back with the latencies, so its cost per
request is printed beside the responders'.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from array import array
from dataclasses import dataclass
from pathlib import Path

from benchkit.workload import CLIENTS, REPLY_WAIT, Load


@dataclass
class ClosedLoop:
    binary: str
    port: int
    connections: int = 2
    threads: int | None = None
    """GOMAXPROCS of the generator; None: Go's default (every core), as a service runs."""

    def run(self, subject: str, requests: int, concurrency: int, *,
            named: bool = False) -> Load:
        """``requests`` requests on ``subject`` from ``concurrency`` requesters; bodies as
        workload.payloads (or named_payloads with ``named``) makes them."""
        with tempfile.TemporaryDirectory(prefix="tw-bench-closed-") as directory:
            file = Path(directory) / "latencies"
            command = [self.binary, "-url", f"nats://127.0.0.1:{self.port}",
                       "-subject", subject, "-connections", str(self.connections),
                       "-concurrency", str(concurrency), "-requests", str(requests),
                       "-clients", str(len(CLIENTS)), "-wait", f"{REPLY_WAIT:g}s",
                       "-latencies", str(file)]
            if named:
                command.append("-named")
            # subprocess.run kills the generator on any exception, a timeout included
            env = dict(os.environ)
            if self.threads:
                env["GOMAXPROCS"] = str(self.threads)
            done = subprocess.run(command, capture_output=True, text=True, check=False,
                                  env=env, timeout=60 + REPLY_WAIT + requests / 500)
            if done.returncode:
                raise RuntimeError(f"the closed-loop generator failed ({done.returncode}):"
                                   f" {done.stderr.strip()}")
            latencies = array("d")
            latencies.frombytes(file.read_bytes())
        if sys.byteorder == "big":
            latencies.byteswap()  # written little-endian
        summary = json.loads(done.stdout)
        return Load(summary["seconds"], latencies, summary["errors"], summary["cpu_seconds"],
                    summary.get("first_error", ""))
