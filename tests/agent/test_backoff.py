"""The agent's reconnect back-off: full jitter, so a restarted server meets no herd."""

from __future__ import annotations

import random
import statistics

from knightwatch.agent.connection import Backoff


def test_delays_are_spread_below_a_doubling_capped_ceiling() -> None:
    """The n-th delay lies in [floor, min(cap, initial * 2**n)]; reset starts over."""
    random.seed(7)
    backoff = Backoff(initial_s=1.0, cap_s=10.0)
    ceilings = [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    for ceiling in ceilings:
        delay = backoff.next_delay()
        assert backoff.floor_s <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_ten_thousand_first_retries_spread_over_the_whole_second() -> None:
    """A herd of 10,000 agents: first retries cover [0, 1 s] evenly, none bunched at one instant."""
    random.seed(2012)
    delays = [Backoff().next_delay() for _ in range(10_000)]
    assert min(delays) >= 0.05 and max(delays) <= 1.0
    assert 0.45 < statistics.mean(delays) < 0.6
    per_tenth = [sum(1 for d in delays if i / 10 <= d < (i + 1) / 10) for i in range(10)]
    assert max(per_tenth[1:]) < 1.3 * min(per_tenth[1:])  # no tenth of a second gets a herd
