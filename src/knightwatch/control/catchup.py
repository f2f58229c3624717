"""Catch-up: bringing a returning node to the release the fleet moved to without it.

A node selected while offline (or one that fell behind) is lagging when it
reconnects: its active release is not its desired one. When no deployment
runs, the orchestrator starts one for the lagging nodes of one release,
through the same two-phase protocol and safety policy (action ``catchup``).
Each (node, release) is tried automatically once per connection, so a node
that cannot take a release is not retried in a loop; a reconnection clears it.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from knightwatch.control.targets import lagging_nodes
from knightwatch.store.queries import active_deployment

__all__ = ["CATCHUP_ACTOR", "CatchUp", "CatchUpPlan"]

CATCHUP_ACTOR = "knightwatch (catch-up)"

CatchUpPlan = tuple[str, list[str]]
"""A release digest and the lagging nodes to bring to it."""


class CatchUp:
    """Which lagging nodes to bring up next, each tried once per connection."""

    def __init__(self) -> None:
        self._tried: set[tuple[str, str]] = set()

    def forget(self, node: str) -> None:
        """``node`` reconnected: it may be tried again."""
        self._tried = {k for k in self._tried if k[0] != node}

    def next_plan(self, session: Session) -> CatchUpPlan | None:
        """The next catch-up to start, or None (a deployment runs, or nobody lags untried).

        The nodes returned count as tried from now on.
        """
        if active_deployment(session) is not None:
            return None
        lagging = [
            n for n in lagging_nodes(session) if (n.name, n.desired_digest) not in self._tried
        ]
        if not lagging:
            return None
        digest = lagging[0].desired_digest
        assert digest is not None  # lagging_nodes: desired_digest is set
        names = [n.name for n in lagging if n.desired_digest == digest]
        self._tried.update((name, digest) for name in names)
        return digest, names
