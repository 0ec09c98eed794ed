"""The bounded pool: admission, hand-back at close, idleness, threads started on demand."""

from __future__ import annotations

import threading

from tests.helpers import wait_until
from token_worker.serve.pool import BoundedPool


def test_admits_workers_plus_backlog_and_hands_back_what_never_started():
    release = threading.Event()
    started: list[int] = []
    ran: list[int] = []

    def run(item: int) -> None:
        started.append(item)
        release.wait(10)
        ran.append(item)

    pool = BoundedPool(2, 3, run)
    assert [pool.try_submit(i) for i in range(6)] == [True] * 5 + [False]
    wait_until(lambda: len(started) == 2, what="two items running")
    assert pool.threads == 2
    assert pool.admitted == 5
    queued = pool.close()
    assert sorted(queued) == [2, 3, 4]  # 0 and 1 are running
    assert pool.admitted == 2
    assert pool.try_submit(9) is False  # closed
    assert not pool.wait_idle(0.01)
    release.set()
    assert pool.wait_idle(5)
    assert sorted(ran) == [0, 1]
    assert pool.close() == []


def test_threads_start_only_as_work_arrives_and_a_failing_item_frees_its_slot():
    def run(item: int) -> None:
        if item == 1:
            raise RuntimeError("boom")

    pool = BoundedPool(8, 0, run)
    assert pool.threads == 0
    for item in range(1, 4):
        assert pool.try_submit(item)
        assert pool.wait_idle(5)
    assert pool.threads <= 3
    assert pool.admitted == 0
    pool.close()


def test_a_running_item_is_answered_once_by_take_running_or_by_its_run_function():
    started, release = threading.Event(), threading.Event()
    claims: list[tuple[str, bool]] = []

    def run(item: str) -> None:
        started.set()
        release.wait(5)
        claims.append((item, pool.claim(item)))

    pool = BoundedPool(2, 0, run)
    assert pool.try_submit("held")
    assert started.wait(5)
    assert pool.take_running() == ["held"]  # the drain ended: the caller answers it
    assert pool.take_running() == []
    release.set()
    assert pool.wait_idle(5)
    assert claims == [("held", False)]  # the late answer is dropped

    release.clear()
    started.clear()
    assert pool.try_submit("finished")
    release.set()
    assert pool.wait_idle(5)
    assert claims[-1] == ("finished", True)  # nobody took it: its own answer goes out
    pool.close()
