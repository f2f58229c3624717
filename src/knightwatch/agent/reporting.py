"""Building the signed reports an agent sends: one sequence per session.

Every report carries the session nonce from the server's ``Hello`` and a
sequence number that starts at 1 and strictly increases within the session,
and is signed with the node key, so the server refuses replays and forgeries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from knightwatch.agent.journal import AgentState
from knightwatch.clock import Clock
from knightwatch.protocol.audit import AuditResult, AuditStatus, RetireResult
from knightwatch.protocol.messages import (
    Ack,
    NodeState,
    Report,
    ReportKind,
    ServiceStatus,
    SignedReport,
)
from knightwatch.protocol.reports import NodeKey, sign_report
from knightwatch.protocol.safety import AlertEvent, HaltAck, RearmAck
from knightwatch.protocol.versions import PROTOCOLS

__all__ = ["Reporter", "node_state"]

_MAX_STAGED = 64


def node_state(
    state: AgentState,
    service: ServiceStatus,
    audit: AuditStatus | None = None,
    *,
    metrics: Mapping[str, float] | None = None,
) -> NodeState:
    """Return what is on the node, as reported (``metrics``: the service's last scrape)."""
    return NodeState(
        active_digest=state.current,
        previous_digest=state.previous,
        staged=state.staged[:_MAX_STAGED],
        service=service,
        audit=audit or AuditStatus(),
        metrics=dict(metrics or {}),
    )


class Reporter:
    """Numbers and signs the reports of one session."""

    def __init__(
        self, node: str, key: NodeKey, clock: Clock, nonce: str, protocol: int = PROTOCOLS[-1]
    ) -> None:
        self.node = node
        self.nonce = nonce
        self.protocol = protocol
        """The session's protocol: what its reports may carry."""
        self._key = key
        self._clock = clock
        self._seq = 0

    @property
    def seq(self) -> int:
        """The sequence number of the last report made."""
        return self._seq

    def make(
        self,
        kind: ReportKind,
        state: NodeState,
        answer: Ack | AuditResult | RetireResult | HaltAck | RearmAck | None = None,
        alerts: Sequence[AlertEvent] = (),
    ) -> SignedReport:
        """Return the next signed report of this session (with a command's answer, if any)."""
        self._seq += 1
        report = Report(
            node=self.node,
            nonce=self.nonce,
            seq=self._seq,
            sent_at=self._clock.now(),
            kind=kind,
            state=state,
            ack=answer if isinstance(answer, Ack) else None,
            audit=answer if isinstance(answer, AuditResult) else None,
            retire=answer if isinstance(answer, RetireResult) else None,
            halt=answer if isinstance(answer, HaltAck) else None,
            rearm=answer if isinstance(answer, RearmAck) else None,
            alerts=list(alerts),
        )
        return sign_report(report, self._key, protocol=self.protocol)
