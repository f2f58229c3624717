"""Building the signed reports an agent sends: one sequence per session.

Every report carries the session nonce from the server's ``Hello`` and a
sequence number that starts at 1 and strictly increases within the session,
and is signed with the node key, so the server refuses replays and forgeries.
"""

from __future__ import annotations

from typing import Literal

from knightwatch.agent.journal import AgentState
from knightwatch.clock import Clock
from knightwatch.protocol.messages import Ack, NodeState, Report, ServiceStatus, SignedReport
from knightwatch.protocol.reports import NodeKey, sign_report

__all__ = ["Reporter", "node_state"]

_MAX_STAGED = 64


def node_state(state: AgentState, service: ServiceStatus) -> NodeState:
    """Return what is on the node, as reported."""
    return NodeState(
        active_digest=state.current,
        previous_digest=state.previous,
        staged=state.staged[:_MAX_STAGED],
        service=service,
    )


class Reporter:
    """Numbers and signs the reports of one session."""

    def __init__(self, node: str, key: NodeKey, clock: Clock, nonce: str) -> None:
        self.node = node
        self.nonce = nonce
        self._key = key
        self._clock = clock
        self._seq = 0

    @property
    def seq(self) -> int:
        """The sequence number of the last report made."""
        return self._seq

    def make(
        self,
        kind: Literal["heartbeat", "inventory", "ack"],
        state: NodeState,
        ack: Ack | None = None,
    ) -> SignedReport:
        """Return the next signed report of this session."""
        self._seq += 1
        report = Report(
            node=self.node,
            nonce=self.nonce,
            seq=self._seq,
            sent_at=self._clock.now(),
            kind=kind,
            state=state,
            ack=ack,
        )
        return sign_report(report, self._key)
