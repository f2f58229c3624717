"""Parent orders and their cumulative fills: a child is never sent for more than remains.

``remaining = quantity - filled - in_flight``. A child order is in flight
from the moment it is planned until its report comes back, so planning
several children before any report cannot send more than the parent asked
for. A path that does not count its children (Power Peg) is tracked too, so
its overfill shows in the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN, FILLED, CANCELLED = "open", "filled", "cancelled"


@dataclass
class Parent:
    """One parent order and what its children did so far."""

    id: str
    symbol: str
    side: str
    quantity: int
    limit_cents: int
    rlp: bool
    filled: int = 0
    in_flight: int = 0
    state: str = OPEN

    @property
    def remaining(self) -> int:
        """Shares a counted child may still be sent for."""
        return max(0, self.quantity - self.filled - self.in_flight)

    @property
    def overfill(self) -> int:
        """Shares filled beyond the parent's quantity (only an uncounted path makes any)."""
        return max(0, self.filled - self.quantity)


@dataclass(frozen=True)
class Child:
    """A child order to send: its parent, size, limit, and whether it counts against the parent."""

    parent: str
    quantity: int
    limit_cents: int
    counted: bool = True
    path: str = "normal"


class ParentBook:
    """Every parent order the router holds."""

    def __init__(self) -> None:
        self.parents: dict[str, Parent] = {}

    def add(self, parent: Parent) -> bool:
        """Take a new parent; False if its id is already known (ignored, not duplicated)."""
        if parent.id in self.parents:
            return False
        self.parents[parent.id] = parent
        return True

    def working(self) -> list[Parent]:
        """Open parents, oldest first."""
        return [p for p in self.parents.values() if p.state == OPEN]

    def plan(self, parent: Parent, shares: int, limit_cents: int, path: str = "normal") -> Child:
        """A counted child of at most ``shares``, never more than remains; marks it in flight."""
        quantity = min(shares, parent.remaining)
        if quantity <= 0:
            raise ValueError(f"parent {parent.id} has nothing left to send")
        parent.in_flight += quantity
        return Child(parent.id, quantity, limit_cents, True, path)

    def settle(self, child: Child, filled: int) -> None:
        """Apply a child's report: its fill counts, the rest is no longer in flight."""
        parent = self.parents[child.parent]
        if not 0 <= filled <= child.quantity:
            raise ValueError(f"a fill of {filled} for a child of {child.quantity} shares")
        parent.filled += filled
        if child.counted:
            parent.in_flight -= child.quantity
        if parent.state == OPEN and child.counted and parent.filled >= parent.quantity:
            parent.state = FILLED

    def cancel_all(self) -> int:
        """Cancel every open parent; how many."""
        working = self.working()
        for parent in working:
            parent.state = CANCELLED
        return len(working)

    def counts(self) -> dict[str, int]:
        """Parents per state."""
        result = {OPEN: 0, FILLED: 0, CANCELLED: 0}
        for parent in self.parents.values():
            result[parent.state] += 1
        return result

    def overfill(self) -> int:
        """Shares filled beyond their parents' quantities, over every parent."""
        return sum(p.overfill for p in self.parents.values())
