"""Audits on demand: every node re-hashes, re-checks and answers now (``knightwatch audit``).

The command an operator runs before the market opens. Each node's answer is
its signed :class:`~knightwatch.protocol.AuditResult`; a node passes only
when it answered, is connected, and found nothing — no drift, no failing
check, no file of a retired component left behind. A node that did not
answer does not pass: an unanswered audit is not a clean one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.bundle.manifest import Manifest
from knightwatch.errors import InvalidInputError, NotFoundError
from knightwatch.protocol.audit import AbsentPath, AuditRequest, AuditResult
from knightwatch.selection import matches_selector, parse_selector
from knightwatch.store import Audit, AuditNodeResult, Node, Release
from knightwatch.store.queries import get_fleet
from knightwatch.vocabulary import NodeStatus

__all__ = [
    "AuditPlan",
    "AuditReport",
    "NodeAudit",
    "audit_report",
    "record_audit_result",
    "retired_paths",
    "start_audit",
]

_RELEASES_LOOKED_BACK = 20
_MAX_ABSENT = 20000
Verdict = Literal["ok", "drift", "failing", "pending", "unreachable"]


@dataclass(frozen=True)
class AuditPlan:
    """An audit just recorded: what to send, and to whom."""

    audit_id: int
    online: list[str]
    offline: list[str]
    request: AuditRequest


@dataclass(frozen=True)
class NodeAudit:
    """One node's part of an audit."""

    node: str
    verdict: Verdict
    connected: bool
    release: str | None
    files: int = 0
    bytes_hashed: int = 0
    seconds: float | None = None
    processes_checked: int = 0
    checks: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0


@dataclass(frozen=True)
class AuditReport:
    """An audit and every node's answer (so far)."""

    audit_id: int
    requested_by: str
    requested_at: datetime
    complete: bool
    """Every audited node answered or is unreachable."""
    ok: bool
    """Every audited node answered and found nothing."""
    nodes: list[NodeAudit]

    def to_json(self) -> dict[str, Any]:
        """Return the report as plain JSON data."""
        return asdict(self)


def start_audit(
    session: Session, selector: str | None, requested_by: str, now: datetime
) -> AuditPlan:
    """Record an audit of the selected enrolled nodes; return what to send to each."""
    terms = parse_selector(selector)
    nodes = [
        n
        for n in session.scalars(
            select(Node).where(Node.status == NodeStatus.ENROLLED).order_by(Node.name)
        )
        if matches_selector(n, terms)
    ]
    if not nodes:
        raise InvalidInputError(
            f"no enrolled node matches {selector or 'the fleet'}",
            hint="list nodes with: knightwatch status",
        )
    audit = Audit(
        requested_by=requested_by,
        requested_at=now,
        nodes=json.dumps([n.name for n in nodes]),
    )
    session.add(audit)
    session.flush()
    request = AuditRequest(audit_id=audit.id, absent=retired_paths(session))
    return AuditPlan(
        audit_id=audit.id,
        online=[n.name for n in nodes if n.connected],
        offline=[n.name for n in nodes if not n.connected],
        request=request,
    )


def retired_paths(session: Session) -> list[AbsentPath]:
    """Files of components that earlier releases had and the fleet's release dropped.

    They must be absent from every node: a retired component left on disk is
    how Power Peg's code lingered for nine years.
    """
    fleet = get_fleet(session)
    current_row = session.get(Release, fleet.desired_digest) if fleet.desired_digest else None
    if current_row is None:
        return []
    current = Manifest.from_bytes(current_row.manifest, where=current_row.release_id)
    kept = {c.name for c in current.spec.component}
    paths = {f.path for f in current.files}
    earlier = session.scalars(
        select(Release)
        .where(Release.name == current_row.name, Release.digest != current_row.digest)
        .order_by(Release.pushed_at.desc())
        .limit(_RELEASES_LOOKED_BACK)
    )
    absent: dict[str, AbsentPath] = {}
    for row in earlier:
        manifest = Manifest.from_bytes(row.manifest, where=row.release_id)
        for entry in manifest.files:
            component = entry.component
            if component and component not in kept and entry.path not in paths:
                absent.setdefault(entry.path, AbsentPath(component=component, path=entry.path))
    return [absent[p] for p in sorted(absent)][:_MAX_ABSENT]


def record_audit_result(session: Session, node: str, result: AuditResult, now: datetime) -> bool:
    """Store a node's answer to an audit; False if the audit or node is unknown (ignored)."""
    audit = session.get(Audit, result.audit_id)
    if audit is None or node not in json.loads(audit.nodes):
        return False
    row = session.get(AuditNodeResult, (result.audit_id, node))
    text = result.model_dump_json()
    if row is None:
        session.add(
            AuditNodeResult(audit_id=result.audit_id, node_name=node, received_at=now, result=text)
        )
    else:
        row.received_at, row.result = now, text
    return True


def audit_report(session: Session, audit_id: int) -> AuditReport:
    """Every audited node's verdict as of now."""
    audit = session.get(Audit, audit_id)
    if audit is None:
        raise NotFoundError(f"no audit {audit_id}", hint="start one with: knightwatch audit")
    nodes = [_node_audit(session, audit_id, name) for name in json.loads(audit.nodes)]
    return AuditReport(
        audit_id=audit.id,
        requested_by=audit.requested_by,
        requested_at=audit.requested_at,
        complete=all(n.verdict != "pending" for n in nodes),
        ok=all(n.verdict == "ok" for n in nodes),
        nodes=nodes,
    )


def _node_audit(session: Session, audit_id: int, name: str) -> NodeAudit:
    node = session.get(Node, name)
    connected = bool(node and node.connected)
    names = {r.digest: r.release_id for r in session.scalars(select(Release))}
    row = session.get(AuditNodeResult, (audit_id, name))
    if row is None:
        active = node.active_digest if node else None
        verdict: Verdict = "pending" if connected else "unreachable"
        return NodeAudit(name, verdict, connected, names.get(active or "", active))
    result = AuditResult.model_validate_json(row.result)
    drift = any(f.is_drift for f in result.findings)
    verdict = "drift" if drift else ("failing" if result.total else "ok")
    return NodeAudit(
        node=name,
        verdict=verdict,
        connected=connected,
        release=names.get(result.release or "", result.release),
        files=result.files,
        bytes_hashed=result.bytes_hashed,
        seconds=(result.finished_at - result.started_at).total_seconds(),
        processes_checked=result.processes_checked,
        checks=[c.model_dump(mode="json") for c in result.checks],
        findings=[f.model_dump(mode="json", exclude_none=True) for f in result.findings],
        total=result.total,
    )
