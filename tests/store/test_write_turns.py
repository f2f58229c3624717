"""SQLite writers of one process take turns in order; a stuck writer does not block forever."""

from __future__ import annotations

import threading
import time

import pytest

from knightwatch.errors import StoreError
from knightwatch.store.database import WriteTurns


def test_writers_are_served_in_the_order_they_asked_and_may_nest() -> None:
    turns = WriteTurns(timeout_s=10)
    order: list[int] = []
    turns.__enter__()
    with turns:  # the holder opens a session inside its own: no deadlock
        pass
    workers = []
    for i in range(5):
        worker = threading.Thread(target=lambda i=i: _write(turns, order, i))
        worker.start()
        workers.append(worker)
        time.sleep(0.05)  # each asks after the one before
    turns.__exit__()
    for worker in workers:
        worker.join(10)
    assert order == [0, 1, 2, 3, 4]


def test_a_writer_that_waits_too_long_fails_and_its_turn_is_skipped() -> None:
    turns = WriteTurns(timeout_s=0.2)
    turns.__enter__()
    with pytest.raises(StoreError, match="busy"):
        _in_other_thread(turns)
    turns.__exit__()
    order: list[int] = []
    _write(turns, order, 1)  # the abandoned ticket does not hold up the next writer
    assert order == [1]


def _write(turns: WriteTurns, order: list[int], i: int) -> None:
    with turns:
        order.append(i)


def _in_other_thread(turns: WriteTurns) -> None:
    failure: list[BaseException] = []

    def enter() -> None:
        try:
            with turns:
                pass
        except StoreError as exc:
            failure.append(exc)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join(10)
    if failure:
        raise failure[0]
