"""A requester's sessions across a fork, without a server: a child lets go of the parent's
session untouched (no close, no finaliser) and opens its own on first use, whether the
at-fork hook ran or only the pid check notices. The end-to-end case, with real forks of a
real client against nats-server, is in tests/integration/test_client.py."""

from __future__ import annotations

import gc
import json
import os
import threading
import weakref

import pytest

from token_worker.client.session import Session, Sessions, shut
from token_worker.errors import ClientClosed


class Wire:
    """Stands in for a session's connection and inbox: records what was done to it."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def abandon(self) -> None:
        self.events.append("abandoned")

    def close(self) -> None:
        self.events.append("closed")


class Opened:
    """An opener that records the sessions it opened, each over its own Wire."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []

    def __call__(self, owner: object, closed: threading.Event) -> Session:
        wire = Wire()
        session = Session(pid=os.getpid(), connection=wire, inbox=wire,
                          requester=None, cache=None,
                          finalizer=weakref.finalize(owner, shut, wire, wire))
        self.sessions.append(session)
        return session

    def wire(self, index: int) -> Wire:
        return self.sessions[index].connection


# Python 3.12+ warns of any fork of a threaded process (the suite has threads by now): a
# fork of a threaded program, as under gunicorn or celery, is what this test is about.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_lets_go_of_the_parents_session_at_once_and_opens_its_own():
    opened = Opened()
    sessions = Sessions(opened)
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and never return into pytest
        code = 1
        try:
            seen = {"mine_after_fork": sessions.mine() is not None,
                    "parent_wire": list(opened.wire(0).events)}
            child_session = sessions.here()
            seen["opened_here"] = child_session.pid == os.getpid()
            sessions.close()
            seen["child_wire"] = opened.wire(1).events
            del sessions
            gc.collect()
            seen["parent_wire_at_the_end"] = opened.wire(0).events
            os.write(writing, json.dumps(seen).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(writing)
    with os.fdopen(reading) as pipe:
        seen = json.loads(pipe.read() or "{}")
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert seen == {"mine_after_fork": False,  # the at-fork hook let go at once
                    "parent_wire": ["abandoned"],  # never closed: only let go
                    "opened_here": True, "child_wire": ["closed", "closed"],
                    "parent_wire_at_the_end": ["abandoned"]}  # its finaliser never ran
    assert sessions.mine() is opened.sessions[0]  # the parent's is untouched
    assert opened.wire(0).events == []


def test_without_the_hook_the_pid_check_on_use_does_the_same(monkeypatch):
    opened = Opened()
    sessions = Sessions(opened)
    parent = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: parent + 1)  # a fork no Python hook saw
    assert sessions.mine() is None
    child = sessions.here()
    assert child.pid == parent + 1 and len(opened.sessions) == 2
    assert opened.wire(0).events == ["abandoned"]
    sessions.close()
    assert opened.wire(1).events == ["closed", "closed"]
    del sessions
    gc.collect()
    assert opened.wire(0).events == ["abandoned"]  # its finaliser was detached


def test_a_client_closed_before_the_fork_stays_closed_in_the_child(monkeypatch):
    opened = Opened()
    sessions = Sessions(opened)
    sessions.close()
    assert opened.wire(0).events == ["closed", "closed"]
    parent = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: parent + 1)
    with pytest.raises(ClientClosed):
        sessions.here()
    assert len(opened.sessions) == 1  # nothing opened for a closed client


def test_closing_in_a_child_that_never_used_the_client_touches_nothing_of_the_parent(
        monkeypatch):
    opened = Opened()
    sessions = Sessions(opened)
    parent = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: parent + 1)
    sessions.close()
    assert opened.wire(0).events == ["abandoned"] and len(opened.sessions) == 1
    with pytest.raises(ClientClosed):
        sessions.here()
