"""Failed operator logins: counted per client address, slowed down, and written to the audit log.

Every refused operator credential counts against the caller's address. The
answer to each further refusal is delayed — 0.1 s at the second failure,
doubling up to 2 s — until ``WINDOW_S`` pass without one. The delay is an
``asyncio`` sleep, so a flood of bad guesses holds no thread: the kill path
and the agents' sessions never wait behind it.

The audit log gets one ``auth.failed`` entry per address at most every
``RECORD_EVERY_S``, carrying how many failures it covers, so a flood cannot
turn the log (and the database's write lock) into its amplifier.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from knightwatch.clock import Clock

__all__ = ["LoginFailures"]

log = logging.getLogger("knightwatch.server")
WINDOW_S = 300.0
RECORD_EVERY_S = 10.0
BASE_DELAY_S = 0.1
MAX_DELAY_S = 2.0
MAX_ADDRESSES = 10_000


@dataclass
class _Address:
    failures: int = 0
    last_at: float = 0.0
    unrecorded: int = 0
    recorded_at: float | None = None


class LoginFailures:
    """Failure counts per address, the delay they earn, and when to record them."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._addresses: dict[str, _Address] = {}

    def count(self, address: str) -> int:
        """Failures from ``address`` in the current window."""
        with self._lock:
            entry = self._addresses.get(address)
            return 0 if entry is None else entry.failures

    def fail(self, address: str) -> tuple[float, int | None]:
        """Count one failure; return (delay to impose, failures to record now or None)."""
        now = self._clock.monotonic()
        with self._lock:
            self._forget_old(now)
            entry = self._addresses.setdefault(address, _Address())
            if now - entry.last_at > WINDOW_S:
                entry.failures = 0
            entry.failures += 1
            entry.last_at = now
            entry.unrecorded += 1
            delay = 0.0 if entry.failures < 2 else BASE_DELAY_S * 2 ** (entry.failures - 2)
            due = entry.recorded_at is None or now - entry.recorded_at >= RECORD_EVERY_S
            record = None
            if due:
                record, entry.unrecorded, entry.recorded_at = entry.unrecorded, 0, now
            return min(delay, MAX_DELAY_S), record

    def _forget_old(self, now: float) -> None:
        if len(self._addresses) < MAX_ADDRESSES:
            return
        for address in [a for a, e in self._addresses.items() if now - e.last_at > WINDOW_S]:
            del self._addresses[address]
        while len(self._addresses) >= MAX_ADDRESSES:  # a spray from many addresses
            self._addresses.pop(next(iter(self._addresses)))

    async def refused(
        self, address: str, path: str, record: Callable[[str, str, int], None]
    ) -> None:
        """A refused operator credential from ``address``: slow the answer, record the failures.

        ``record(address, path, failures)`` writes the audit entry (it runs in
        a worker thread); a failure to write it is logged, never raised.
        """
        delay, failures = self.fail(address)
        if failures is not None:
            try:
                await asyncio.to_thread(record, address, path, failures)
            except Exception:
                log.exception("recording failed logins from %s failed", address)
        if delay > 0:
            await asyncio.sleep(delay)
