"""Refused operator credentials: counted per address, slowed, recorded without amplification."""

from __future__ import annotations

import asyncio

from knightwatch.clock import VirtualClock
from knightwatch.server.login_failures import MAX_DELAY_S, RECORD_EVERY_S, WINDOW_S, LoginFailures


def test_the_delay_doubles_up_to_its_cap_and_the_window_forgets() -> None:
    """0, 0.1, 0.2, 0.4 … 2 s; another address is not slowed; a quiet window starts over."""
    clock = VirtualClock()
    failures = LoginFailures(clock)
    delays = [failures.fail("10.0.0.1")[0] for _ in range(8)]
    assert delays[:4] == [0.0, 0.1, 0.2, 0.4] and delays[-1] == MAX_DELAY_S
    assert failures.fail("10.0.0.2")[0] == 0.0
    clock.advance(WINDOW_S + 1)
    assert failures.fail("10.0.0.1")[0] == 0.0


def test_a_flood_is_recorded_as_counts_not_entry_per_guess() -> None:
    """The first failure is recorded at once; the rest of a burst in the next entry, counted."""
    clock = VirtualClock()
    failures = LoginFailures(clock)
    recorded = [failures.fail("a")[1] for _ in range(5)]
    assert recorded == [1, None, None, None, None]
    clock.advance(RECORD_EVERY_S)
    assert failures.fail("a")[1] == 5  # the four unrecorded and this one


def test_refused_records_then_sleeps_without_a_thread() -> None:
    """``refused`` hands the count to the recorder (a worker thread) and survives its failure."""
    calls: list[tuple[str, str, int]] = []

    def record(address: str, route: str, count: int) -> None:
        calls.append((address, route, count))
        raise RuntimeError("the database is down")

    failures = LoginFailures(VirtualClock())
    asyncio.run(failures.refused("a", "GET /api/v1/status", record))
    assert calls == [("a", "GET /api/v1/status", 1)] and failures.count("a") == 1
