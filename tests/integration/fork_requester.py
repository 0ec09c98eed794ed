"""A program for the fork tests of test_client.py: one TokenClient made in this process
and used here, then in forked children, as a pre-forking server (gunicorn --preload,
celery prefork) would use it.

    python tests/integration/fork_requester.py NATS_URL HOW CLIENT_NAME CHILDREN CALLS

``HOW`` is ``os.fork`` (children that exit normally: atexit and finalisers run; half close
the client first, half leave it to the finaliser, and one more child never touches it) or
``multiprocessing`` (a pool of the ``fork`` start method). The client id and secret come
from ``FORK_CLIENT_ID`` and ``FORK_CLIENT_SECRET``. It reports on stdout, one JSON object a
line: ``{"parent": "connected"}``; one ``{"child": ...}`` per child that made calls;
``{"children": "done", ...}``; then it waits for a line on stdin and reports the parent's
next call (``{"parent": "answered", ...}``) before it exits.

Imports token-worker only, so that what runs is what a service runs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from typing import Any

from token_worker import TokenClient, TokenRequestFailed

CLIENT: TokenClient | None = None
"""Made before the fork; the children inherit it."""


def report(document: dict[str, Any]) -> None:
    """One line, in one write (children share the pipe)."""
    os.write(1, (json.dumps(document) + "\n").encode())


def calls(number: int, count: int) -> dict[str, Any]:
    """``count`` calls on the inherited client; how long they took and how they ended."""
    assert CLIENT is not None
    answered = 0
    errors: list[str] = []
    slowest = 0.0
    started = time.monotonic()
    for _ in range(count):
        began = time.monotonic()
        try:
            token = CLIENT.get_token(os.environ["FORK_CLIENT_ID"],
                                     os.environ["FORK_CLIENT_SECRET"])
        except TokenRequestFailed as error:
            errors.append(f"{type(error).__name__}: {error}")
        else:
            answered += token.token_type == "Bearer"
        slowest = max(slowest, time.monotonic() - began)
    return {"child": number, "pid": os.getpid(), "answered": answered, "errors": errors,
            "seconds": time.monotonic() - started, "slowest": slowest,
            "requests_sent": CLIENT.requests_sent}


def with_fork(children: int, count: int) -> list[int]:
    """Children forked with os.fork that return from here into a normal interpreter exit."""
    assert CLIENT is not None
    pids = []
    for number in range(children + 1):
        pid = os.fork()
        if pid == 0:
            if number < children:  # the last child never touches the client
                report(calls(number, count))
                if number % 2:
                    CLIENT.close()  # the others leave it to the finaliser at exit
            sys.exit(0)  # a normal exit: atexit handlers and finalisers run
        pids.append(pid)
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


def with_pool(children: int, count: int) -> list[int]:
    """A pool of the fork start method, closed and joined (its workers end normally)."""
    pool = multiprocessing.get_context("fork").Pool(children)
    try:
        results = [pool.apply_async(calls, (number, count)) for number in range(children)]
        for result in results:
            report(result.get(timeout=60))
        pool.close()
        pool.join()
    except BaseException:
        pool.terminate()
        raise
    return [0] * children


def main(url: str, how: str, name: str, children: int, count: int) -> int:
    global CLIENT  # noqa: PLW0603 - what the children inherit
    CLIENT = TokenClient(url, name=name, cache=False)
    CLIENT.get_token(os.environ["FORK_CLIENT_ID"], os.environ["FORK_CLIENT_SECRET"])
    report({"parent": "connected", "inbox": CLIENT.inbox})
    exit_codes = with_fork(children, count) if how == "os.fork" else with_pool(children, count)
    report({"children": "done", "exit_codes": exit_codes})
    sys.stdin.readline()
    began = time.monotonic()
    token = CLIENT.get_token(os.environ["FORK_CLIENT_ID"], os.environ["FORK_CLIENT_SECRET"])
    report({"parent": "answered", "token_type": token.token_type,
            "seconds": time.monotonic() - began, "requests_sent": CLIENT.requests_sent,
            "inbox": CLIENT.inbox})
    CLIENT.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
