"""Fleet state: what every node reported, and what that means for the fleet.

The control plane is the only writer of desired state; agents report actual
state. Any difference between the two is a visible condition — DRIFTED,
MIXED (with its age) or DEGRADED — never silently "fixed".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.canonical import canonical_json
from knightwatch.protocol import Report
from knightwatch.store import Node, Release
from knightwatch.store.queries import active_deployment, get_fleet

__all__ = ["FleetState", "FleetStatus", "NodeStatus", "fleet_status", "ingest_report"]


class FleetState(StrEnum):
    """The one-word answer to "is every node running exactly release X?"."""

    CONVERGED = "CONVERGED"
    HALTED = "HALTED"
    DRIFTED = "DRIFTED"
    MIXED = "MIXED"
    DEPLOYING = "DEPLOYING"
    DEGRADED = "DEGRADED"
    EMPTY = "EMPTY"


@dataclass(frozen=True)
class NodeStatus:
    """One node as the control plane last heard of it."""

    name: str
    group: str
    status: str
    connected: bool
    active_release: str | None
    active_digest: str | None
    desired_digest: str | None
    service_state: str
    service_pid: int | None
    service_version: str | None
    service_detail: str | None
    last_report_age_s: float | None
    drift_state: str
    drift_count: int
    drift_since: datetime | None
    findings: list[dict[str, Any]]
    audit: dict[str, Any]
    """The agent's audit as last reported: watching, files, when each check last ran."""
    halted: bool = False
    halt_source: str | None = None
    """What halted the node: ``kill``, ``dead-man`` or ``guard``."""
    halt_reason: str | None = None
    halted_since: datetime | None = None


@dataclass(frozen=True)
class FleetStatus:
    """The fleet's state, the reasons for it, and every node."""

    state: FleetState
    reasons: list[str]
    desired_release: str | None
    previous_release: str | None
    mixed_for_s: float | None
    deployment_id: int | None
    nodes: list[NodeStatus] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the status as plain JSON data."""
        return asdict(self)


def ingest_report(node: Node, report: Report, now: datetime) -> None:
    """Copy a verified report's facts onto the node's row."""
    state = report.state
    node.active_digest = state.active_digest
    node.previous_digest = state.previous_digest
    service = state.service
    node.service_state = service.state.value
    node.service_pid = service.pid
    node.service_started_at = service.started_at
    node.service_version = service.version
    node.service_restarts = service.restarts
    node.service_detail = service.detail
    node.last_report = canonical_json(report.model_dump(mode="json")).decode("utf-8")
    node.last_report_at = now
    node.last_seq = report.seq


def fleet_status(session: Session, now: datetime) -> FleetStatus:
    """Compute the fleet's state from the nodes' last reports (and record MIXED's age)."""
    nodes = list(session.scalars(select(Node).where(Node.status != "retired").order_by(Node.name)))
    names = {r.digest: r.release_id for r in session.scalars(select(Release))}
    fleet = get_fleet(session)
    deployment = active_deployment(session)
    reasons = _mixed_reasons(nodes, names)
    mixed = bool(reasons)
    if mixed and fleet.mixed_since is None:
        fleet.mixed_since = now
    elif not mixed:
        fleet.mixed_since = None
    degraded = _degraded_reasons(nodes)
    drifted = [_drift_reason(n) for n in nodes if n.drift_state == "drifted"]
    halted = [_halt_reason(n) for n in nodes if n.halted]
    reasons = [*halted, *drifted, *reasons]
    if deployment is not None:
        state = FleetState.DEPLOYING
        reasons = [f"deployment {deployment.id} is {deployment.state}", *reasons]
    elif not nodes:
        state = FleetState.EMPTY
    elif halted:
        state = FleetState.HALTED
    elif drifted:
        state = FleetState.DRIFTED
    elif mixed:
        state = FleetState.MIXED
    elif degraded:
        state = FleetState.DEGRADED
    else:
        state = FleetState.CONVERGED
    return FleetStatus(
        state=state,
        reasons=[*reasons, *degraded],
        desired_release=names.get(fleet.desired_digest or "", fleet.desired_digest),
        previous_release=names.get(fleet.previous_digest or "", fleet.previous_digest),
        mixed_for_s=(now - fleet.mixed_since).total_seconds() if fleet.mixed_since else None,
        deployment_id=deployment.id if deployment else None,
        nodes=[_node_status(n, names, now) for n in nodes],
    )


def _mixed_reasons(nodes: list[Node], names: dict[str, str]) -> list[str]:
    reasons = []
    by_group: dict[str, set[str | None]] = {}
    for node in nodes:
        if node.status != "enrolled":
            continue
        by_group.setdefault(node.group_name, set()).add(node.active_digest)
        if node.desired_digest and node.active_digest != node.desired_digest:
            have = names.get(node.active_digest or "", node.active_digest or "nothing")
            want = names.get(node.desired_digest, node.desired_digest)
            reasons.append(f"{node.name} runs {have}, the fleet runs {want}")
    for group, digests in by_group.items():
        if len(digests) > 1 and not reasons:
            shown = ", ".join(sorted(names.get(d or "", d or "nothing") for d in digests))
            reasons.append(f"group {group} runs {len(digests)} releases: {shown}")
    return reasons


def _drift_reason(node: Node) -> str:
    findings = json.loads(node.drift_findings or "[]")
    first = f": {findings[0]['detail']}" if findings else ""
    return f"{node.name} DRIFTED ({node.drift_count} finding(s)){first}"


def _halt_reason(node: Node) -> str:
    why = f": {node.halt_reason}" if node.halt_reason else ""
    return f"{node.name} HALTED by {node.halt_source or 'kill'}{why}"


def _degraded_reasons(nodes: list[Node]) -> list[str]:
    reasons = []
    for node in nodes:
        if node.status == "pending":
            reasons.append(f"{node.name} has not enrolled yet")
        elif not node.connected:
            reasons.append(f"{node.name} is not connected")
        elif node.halted:
            continue  # stopped on purpose: listed as HALTED
        elif node.active_digest and node.service_state not in ("running", "none"):
            # "none": the release declares no service, so nothing is there to run
            reasons.append(
                f"{node.name}: service is {node.service_state}"
                + (f" ({node.service_detail})" if node.service_detail else "")
            )
    return reasons


def _node_status(node: Node, names: dict[str, str], now: datetime) -> NodeStatus:
    age = (now - node.last_report_at).total_seconds() if node.last_report_at else None
    return NodeStatus(
        name=node.name,
        group=node.group_name,
        status=node.status,
        connected=node.connected,
        active_release=names.get(node.active_digest or "", node.active_digest),
        active_digest=node.active_digest,
        desired_digest=node.desired_digest,
        service_state=node.service_state,
        service_pid=node.service_pid,
        service_version=node.service_version,
        service_detail=node.service_detail,
        last_report_age_s=age,
        drift_state=node.drift_state,
        drift_count=node.drift_count,
        drift_since=node.drift_since,
        findings=json.loads(node.drift_findings or "[]"),
        audit=_audit_summary(node),
        halted=node.halted,
        halt_source=node.halt_source,
        halt_reason=node.halt_reason,
        halted_since=node.halted_since,
    )


def _audit_summary(node: Node) -> dict[str, Any]:
    if not node.last_report:
        return {}
    audit = json.loads(node.last_report).get("state", {}).get("audit", {})
    keys = ("watching", "files", "last_sweep_at", "last_process_check_at")
    return {key: audit.get(key) for key in (*keys, "last_functional_check_at")}
