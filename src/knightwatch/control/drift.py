"""Drift on the control plane: what each node's audit says, and what it blocks (P2).

A node whose audit reports any drift is DRIFTED: the fleet status shows it,
an alert is raised, and deploys and flag changes are refused until the node
is reconciled. Drift is never repaired silently: only an operator's
``knightwatch reconcile`` (a recorded deployment) restores the release.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.control import alerts
from knightwatch.protocol.audit import AuditStatus, Finding, Severity
from knightwatch.store import Node
from knightwatch.vocabulary import DriftState, NodeStatus

__all__ = ["DRIFT_RULE", "DriftChange", "drifted_nodes", "ingest_audit_status"]

DRIFT_RULE = "node-drift"
_SHOWN = 3


@dataclass(frozen=True)
class DriftChange:
    """How a report changed a node's drift (None when it did not)."""

    node: str
    drifted: bool
    summary: str


def ingest_audit_status(
    session: Session, node: Node, status: AuditStatus, now: datetime
) -> DriftChange | None:
    """Record a node's audit status; raise or resolve its drift alert on a change."""
    drift = [f for f in status.findings if f.is_drift]
    shown = [f.model_dump(mode="json", exclude_none=True) for f in status.findings]
    node.drift_findings = json.dumps(shown, sort_keys=True)
    not_drift = len(status.findings) - len(drift)  # heartbeats carry the most severe first
    total_drift = max(len(drift), status.total - not_drift)
    node.drift_count = total_drift
    was = node.drift_state
    if not drift:
        audited = status.last_sweep_at is not None or status.release is None
        node.drift_state, node.drift_since = (
            (DriftState.CLEAN if audited else DriftState.UNKNOWN),
            None,
        )
        if was == DriftState.DRIFTED:
            alerts.resolve(
                session,
                alerts.fingerprint(DRIFT_RULE, node.name),
                by="agent (drift cleared)",
                now=now,
            )
            return DriftChange(node.name, False, f"{node.name}: no drift")
        return None
    summary = describe(node.name, drift, total_drift)
    detail = "\n".join(f.detail for f in drift)
    critical = any(f.severity is Severity.CRITICAL for f in drift)
    severity: alerts.AlertSeverity = Severity.CRITICAL if critical else Severity.WARNING
    if was != DriftState.DRIFTED:
        node.drift_state, node.drift_since = DriftState.DRIFTED, now
        alerts.fire(
            session,
            rule=DRIFT_RULE,
            node=node.name,
            severity=severity,
            summary=summary,
            detail=detail,
            now=now,
        )
        return DriftChange(node.name, True, summary)
    open_alert = alerts.open_alert(session, alerts.fingerprint(DRIFT_RULE, node.name))
    if open_alert is not None:
        alerts.update(open_alert, summary=summary, detail=detail, now=now)
    return None


def describe(node: str, drift: list[Finding], total: int) -> str:
    """One line: the node, how many findings, and the first few."""
    critical = sum(1 for f in drift if f.severity is Severity.CRITICAL)
    first = "; ".join(f.detail for f in drift[:_SHOWN])
    more = f" (and {total - _SHOWN} more)" if total > _SHOWN else ""
    return f"{node} drifted: {total} finding(s), {critical} critical: {first}{more}"


def drifted_nodes(session: Session, names: list[str] | None = None) -> list[Node]:
    """Enrolled nodes that are DRIFTED (among ``names``, if given)."""
    statement = select(Node).where(
        Node.drift_state == DriftState.DRIFTED, Node.status != NodeStatus.RETIRED
    )
    nodes = list(session.scalars(statement.order_by(Node.name)))
    return [n for n in nodes if names is None or n.name in names]
