"""Routing strategies of SMARS 2012.08-reuse: RLP behind the repurposed ``power_peg`` flag.

The code of 2012.08, but reading the old Power Peg flag. Retail parents route through the Retail
Liquidity Program when ``power_peg`` is on; every child is counted against its
parent, whichever the path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smars.parents import Child, Parent, ParentBook

RLP_FLAG = "power_peg"  # the old Power Peg flag, repurposed for RLP


def children(book: ParentBook, parent: Parent, config: dict[str, Any], flags: Any) -> list[Child]:
    """The child orders of ``parent`` for one simulated second."""
    if parent.remaining <= 0:
        return []
    path = "rlp" if parent.rlp and flags.is_enabled(RLP_FLAG) else "normal"
    return [book.plan(parent, int(config["child_shares"]), parent.limit_cents, path)]


def preopen(flags: Any, log: Callable[[str], None]) -> None:
    """No legacy path, nothing to check before the open."""
