"""Time as a dependency: the domain asks a :class:`Clock`, never the OS.

Production code uses :class:`SystemClock`; simulations and tests use
:class:`VirtualClock`, so timeouts and "45 minutes of trading" run in
milliseconds and are reproducible.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "SystemClock", "VirtualClock"]


class Clock(Protocol):
    """A source of wall time and monotonic time."""

    def now(self) -> datetime:
        """Return the current wall time, timezone-aware in UTC."""
        ...

    def monotonic(self) -> float:
        """Return seconds from an arbitrary origin that never goes backwards."""
        ...


class SystemClock:
    """The real clock of this machine."""

    def now(self) -> datetime:
        """Return the current UTC time."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Return ``time.monotonic()``."""
        return time.monotonic()


class VirtualClock:
    """A clock that moves only when told to; for tests and simulations."""

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2012, 8, 1, 13, 30, tzinfo=UTC)
        self._elapsed = 0.0

    def now(self) -> datetime:
        """Return the start time plus the time advanced so far."""
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        """Return the seconds advanced so far."""
        return self._elapsed

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._elapsed += seconds
