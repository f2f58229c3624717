"""Many items in one transaction: no savepoints while all goes well, one each when not.

Agent reports and deployment acks are stored in batches, and one bad item
must not void the others. A savepoint per item gives that, but its
``SAVEPOINT``/``RELEASE`` and the flush between them cost more than the
item's own update, and they stop the ORM from sending a batch's inserts and
updates as one statement each. So a batch is first stored without them;
only when that try fails (an item raises, or the commit does) is it rolled
back whole and stored again with a savepoint per item, where a failure is
rolled back alone and returned in its item's place.

Both tries run the same code on the same items, so the second must not
depend on anything the first did outside the transaction: callers collect
their after-commit effects per try and act on the try that committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session

__all__ = ["apply_item", "fast_then_isolated"]

log = logging.getLogger("knightwatch.store")

R = TypeVar("R")
T = TypeVar("T")


def apply_item(session: Session, apply: Callable[[], R], *, isolated: bool) -> R | Exception:
    """Apply one item of a batch; ``isolated``: in its own savepoint, a failure returned.

    Not isolated, a failure propagates (and fails the whole try).
    """
    if not isolated:
        return apply()
    try:
        with session.begin_nested():
            return apply()
    except Exception as exc:  # rolled back to the savepoint: the others stand
        return exc


def fast_then_isolated(attempt: Callable[[bool], T], what: str) -> T:
    """Run ``attempt(isolated=False)``; if it raises, log why and run ``attempt(True)``."""
    try:
        return attempt(False)
    except Exception as exc:
        log.warning("storing %s at once failed (%s); storing each alone", what, exc)
        return attempt(True)
