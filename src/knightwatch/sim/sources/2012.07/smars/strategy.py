"""Routing strategies of SMARS 2012.07: the normal path, and Power Peg.

Power Peg was retired in 2003 but never deleted. When a parent order carries
the Power Peg bit (the field the order format now calls ``rlp``) and the
``power_peg`` flag is on, it sends child orders priced through the market,
every simulated second, without counting their fills against the parent:
the cumulative-quantity check was moved out of its path in 2005, so nothing
ever tells it the parent is filled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smars.parents import Child, Parent, ParentBook

POWER_PEG = "power_peg"


def children(book: ParentBook, parent: Parent, config: dict[str, Any], flags: Any) -> list[Child]:
    """The child orders of ``parent`` for one simulated second."""
    if parent.rlp and flags.is_enabled(POWER_PEG):
        through = float(config["power_peg_through"])
        factor = 1 + through if parent.side == "buy" else 1 - through
        limit = max(1, round(parent.limit_cents * factor))
        count = int(config["power_peg_children_per_second"])
        return [Child(parent.id, parent.quantity, limit, False, "power_peg")] * count
    if parent.remaining <= 0:
        return []
    return [book.plan(parent, int(config["child_shares"]), parent.limit_cents)]


def preopen(flags: Any, log: Callable[[str], None]) -> None:
    """The pre-open check: Power Peg's configuration went in 2003, so it says so."""
    if flags.is_enabled(POWER_PEG):
        log(
            "Power Peg disabled: legacy configuration missing; "
            "parents with the Power Peg bit route by the legacy path"
        )
