"""Agents refused at connect: which refusals are worth a store write.

A refused agent tries again on its back-off (every few seconds, up to 10 s
apart). A fleet of agents newer than its control plane — upgraded in the
wrong order — would turn every try into a transaction on the store thread.
So a node's refusal is written when its reason changes, or once
``RECORD_EVERY_S`` passed since it was last written: the status shows it at
once, and its time stays recent. An agent of the node that is accepted
clears the node's entry, so the next refusal is written at once again.
"""

from __future__ import annotations

import threading

from knightwatch.clock import Clock

__all__ = ["RECORD_EVERY_S", "RefusalRecords"]

RECORD_EVERY_S = 30.0


class RefusalRecords:
    """The refusal last written for each node, and when (monotonic seconds)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._written: dict[str, tuple[str, float]] = {}

    def due(self, node: str, reason: str) -> bool:
        """Whether refusing ``node`` for ``reason`` now should be written (and note it if so)."""
        now = self._clock.monotonic()
        with self._lock:
            last = self._written.get(node)
            if last is not None and last[0] == reason and now - last[1] < RECORD_EVERY_S:
                return False
            self._written[node] = (reason, now)
            return True

    def accepted(self, node: str) -> None:
        """An agent of ``node`` was accepted: its next refusal is news again."""
        with self._lock:
            self._written.pop(node, None)
