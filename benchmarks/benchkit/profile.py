"""Where a cache hit's time goes: token-worker (a) under the closed-loop generator, sampled
by py-spy, and the functions that took the largest shares of the samples.

Only samples of a thread holding the GIL count (``--gil``): the Python work. A system call
(``recv``, ``sendall``) releases the GIL, so its kernel time is not in the shares; the CPU
per request printed beside them includes it.

py-spy (``pip install py-spy``) samples the worker from outside, so the code measured is
the code shipped; it needs ptrace rights over the worker (root, or
``kernel.yama.ptrace_scope`` 0). The collapsed stacks are kept for flame graphs
(``flamegraph.pl``, speedscope).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchkit.closedloop import ClosedLoop
from benchkit.native import BUILD
from benchkit.responders import token_worker
from benchkit.scenarios import SUBJECTS, Setup, warm

RATE = 250
"""Samples a second: enough for shares to 0.1 % over a run of seconds, little overhead."""

TOP = 25


def profile(setup: Setup, concurrency: int = 16) -> None:
    """Profile (a) at ``concurrency``; prints the top functions by self and total share."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None or setup.programs.closed_loop is None:
        print("\nProfile: skipped (needs py-spy on PATH and the closed-loop generator)")
        return
    bench = setup.bench
    worker = token_worker(bench.nats, bench.idp, TOKEN_SUBJECT=SUBJECTS["a"])
    try:
        bench.wait_serving(worker, SUBJECTS["a"])
        warm(bench, "a")
        stacks = Path(setup.directory) / "profile.txt"
        recorder = subprocess.Popen([spy, "record", "--pid", str(worker.process.pid),
                                     "--rate", str(RATE), "--format", "raw",
                                     "--output", str(stacks), "--nonblocking", "--gil"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        generator = ClosedLoop(setup.programs.closed_loop, bench.nats.port,
                               setup.connections, setup.generator_threads)
        result = bench.measure(worker, setup.requests, lambda: generator.run(
            SUBJECTS["a"], setup.requests, concurrency))
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        _, error = recorder.communicate(timeout=30)
    finally:
        worker.stop()
    if not stacks.exists():
        print(f"\nProfile: py-spy wrote nothing ({error.decode(errors='replace').strip()})")
        return
    kept = BUILD / "profile.txt"
    kept.parent.mkdir(exist_ok=True)
    shutil.copyfile(stacks, kept)
    print(f"\nProfile of (a) at concurrency {concurrency}, closed loop, "
          f"{setup.requests:,} requests, {result.rate:,.0f} req/s, "
          f"{result.cpu_per_request:.1f} µs CPU per request (collapsed stacks: {kept}):")
    report(stacks.read_text())


def report(collapsed: str) -> None:
    """Top functions by self share and by total share of the samples, busy threads only."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        print("  no samples")
        return
    for title, counts in (("self", own), ("total (the function and what it calls)", total)):
        print(f"  by {title}, share of {samples:,} samples:")
        for frame, count in counts.most_common(TOP):
            print(f"    {count / samples * 100:5.1f}%  {frame}")


def _short(frame: str) -> str:
    """``function (path/to/module.py:line)`` as ``function (module.py)``: one entry for a
    function, whatever line of it was sampled."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({Path(path).name})" if path else name
