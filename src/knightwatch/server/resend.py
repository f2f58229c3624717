"""A resend throttle: send a repeated message at most once per interval.

A lift re-arms every latched agent; each report an agent sent before it read
the re-arm still says it is latched, and answering every one with another
re-arm made 40,000 of them for one 10,000-node lift. A session's messages
arrive in order, so one resend per interval is enough.
"""

from __future__ import annotations

from collections.abc import Hashable

from knightwatch.clock import Clock

__all__ = ["ResendThrottle"]


class ResendThrottle:
    """Which messages are due to be sent again, by key, on an injected clock."""

    def __init__(self, clock: Clock, interval_s: float) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._last: dict[Hashable, float] = {}

    def due(self, key: Hashable) -> bool:
        """Whether to send the message ``key`` now; if so, it counts as sent now."""
        now = self._clock.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            return False
        self._last[key] = now
        return True
