"""Share accounting: child orders must never exceed their parent order."""

from __future__ import annotations

import threading


class Book:
    """Counts parent and child shares, as the guards read them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.parent_shares = 0
        self.child_shares = 0

    def route(self, shares: int) -> None:
        """Accept a parent order and send exactly its shares as child orders."""
        with self._lock:
            self.parent_shares += shares
            self.child_shares += shares

    def metrics(self) -> str:
        """Return Prometheus text exposition of the counters."""
        return (
            "# TYPE smars_parent_shares_total counter\n"
            f"smars_parent_shares_total {self.parent_shares}\n"
            "# TYPE smars_child_shares_sent_total counter\n"
            f"smars_child_shares_sent_total {self.child_shares}\n"
        )
