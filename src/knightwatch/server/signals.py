"""A change counter that request threads can wait on: long polls without polling the store.

The store thread bumps it after it committed something a waiter may be
waiting for (a halt acknowledgement); a waiting request wakes, looks at the
store once, and either answers or waits again.
"""

from __future__ import annotations

import threading
import time

__all__ = ["ChangeSignal"]


class ChangeSignal:
    """A version number, bumped by writers, waited on by readers (thread-safe)."""

    def __init__(self) -> None:
        self._version = 0
        self._changed = threading.Condition()

    @property
    def version(self) -> int:
        """The current version: pass it to :meth:`wait` to wait for the next change."""
        with self._changed:
            return self._version

    def bump(self) -> None:
        """Something changed: wake every waiter."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def wait(self, seen: int, timeout_s: float) -> int:
        """Block until the version is no longer ``seen`` or ``timeout_s`` passed; return it."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._changed:
            while self._version == seen:
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    break
            return self._version
