"""The bounded pool: admission, hand-back at close, idleness, threads started on demand."""

from __future__ import annotations

import threading

from tests.helpers import wait_until
from token_worker.serve.pool import BoundedPool


def test_admits_workers_plus_backlog_and_hands_back_what_never_started():
    release = threading.Event()
    started: list[int] = []
    ran: list[int] = []
    dropped: list[int] = []

    def task(item: int) -> tuple[object, object]:
        def run() -> None:
            started.append(item)
            release.wait(10)
            ran.append(item)
        return run, lambda: dropped.append(item)

    pool = BoundedPool(2, 3)
    assert [pool.try_submit(*task(i)) for i in range(6)] == [True] * 5 + [False]
    wait_until(lambda: len(started) == 2, what="two tasks running")
    assert pool.threads == 2
    assert pool.admitted == 5
    queued = pool.close()
    for left in queued:
        left.drop()
    assert sorted(dropped) == [2, 3, 4]  # 0 and 1 are running
    assert pool.admitted == 2
    assert pool.closed
    assert pool.try_submit(*task(9)) is False  # closed
    assert not pool.wait_idle(0.01)
    release.set()
    assert pool.wait_idle(5)
    assert sorted(ran) == [0, 1]
    assert pool.close() == []


def test_threads_start_only_as_work_arrives_and_a_failing_task_frees_its_slot():
    def run() -> None:
        raise RuntimeError("boom")

    pool = BoundedPool(8, 0)
    assert pool.threads == 0
    for _ in range(3):
        assert pool.try_submit(run, lambda: None)
        assert pool.wait_idle(5)
    assert pool.threads <= 3
    assert pool.admitted == 0
    pool.close()


def test_a_waiting_thread_takes_new_work_before_another_is_started():
    ran = threading.Event()
    pool = BoundedPool(4, 0)
    assert pool.try_submit(lambda: None, lambda: None)
    assert pool.wait_idle(5)
    wait_until(lambda: pool._waiting_threads == 1, what="the thread to wait for work")
    assert pool.try_submit(ran.set, lambda: None)
    assert ran.wait(5)
    assert pool.threads == 1
    pool.close()
