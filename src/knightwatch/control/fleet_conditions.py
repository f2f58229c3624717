"""The fleet's conditions, computed one way for where they are recorded and where they are read.

MIXED (nodes on different releases, or a switch that may have happened
unseen), UNKNOWN (an agent gone), DRIFTED, HALTED and DEGRADED: each is a
list of reasons naming nodes; :mod:`knightwatch.control.fleet` records when
the fleet became MIXED, :mod:`knightwatch.control.fleet_status` shows it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.store import Deployment, DeploymentNode, Fleet, Node, Release
from knightwatch.store.queries import get_fleet
from knightwatch.vocabulary import HaltSource, NodePhase, NodeStatus, ServiceState

__all__ = [
    "NodeFacts",
    "NodeLike",
    "Unconfirmed",
    "age_s",
    "ago",
    "condition_facts",
    "degraded_reasons",
    "drift_reason",
    "earliest",
    "halt_reason",
    "is_current",
    "live_nodes",
    "lock_fleet",
    "mixed_reasons",
    "release_name",
    "release_names",
    "unconfirmed_switches",
    "unknown_reasons",
]

P = NodePhase
_UNCONFIRMED = frozenset({P.COMMITTING, P.ROLLING_BACK})
"""A Commit or Rollback was issued and no answer came: it may have been applied."""
_FAILED_SWITCH = frozenset({P.COMMIT_FAILED, P.ROLLBACK_FAILED})
"""Failed by the agent's ack (known) or by a disconnect or timeout (unknown)."""


@dataclass(frozen=True)
class Unconfirmed:
    """A switch that may have happened on a node whose agent went away before answering."""

    deployment_id: int
    phase: str
    digests: tuple[str | None, ...]


def lock_fleet(session: Session, now: datetime) -> Fleet:
    """The fleet row, locked before any node row is written (the order every writer keeps).

    The orchestrator and drain/resume/retire lock the fleet row first, then
    write nodes; taking it here before this transaction's node changes are
    flushed keeps one lock order on PostgreSQL, so the two never deadlock.
    """
    with session.no_autoflush:
        return get_fleet(session, for_update=True, now=now)


def live_nodes(session: Session) -> list[Node]:
    """Every node not retired, by name."""
    statement = select(Node).where(Node.status != NodeStatus.RETIRED).order_by(Node.name)
    return list(session.scalars(statement))


@dataclass(frozen=True)
class NodeFacts:
    """The columns of a node the fleet's conditions read, and nothing else.

    Recording the conditions runs every second and after every batch of
    reports; at 10,000 nodes, plain rows cost a fraction of ORM objects.
    """

    name: str
    status: str
    group_name: str
    active_digest: str | None
    desired_digest: str | None
    connected: bool
    connected_at: datetime | None
    last_report_at: datetime | None


NodeLike = Node | NodeFacts
"""A node as the conditions read it: a full row (status views) or its facts (recording)."""
_CONDITION_COLUMNS = (  # in NodeFacts' order
    Node.name,
    Node.status,
    Node.group_name,
    Node.active_digest,
    Node.desired_digest,
    Node.connected,
    Node.connected_at,
    Node.last_report_at,
)


def condition_facts(session: Session) -> list[NodeFacts]:
    """:class:`NodeFacts` of every node not retired, by name."""
    statement = (
        select(*_CONDITION_COLUMNS).where(Node.status != NodeStatus.RETIRED).order_by(Node.name)
    )
    return [NodeFacts(*row) for row in session.execute(statement)]


def release_names(session: Session) -> dict[str, str]:
    """Release ID by digest, for every release."""
    rows = session.execute(select(Release.digest, Release.release_id))
    return {row.digest: row.release_id for row in rows}


def is_current(node: NodeLike) -> bool:
    """The node's facts are current: its agent is connected and has reported since."""
    return (
        node.connected
        and node.connected_at is not None
        and node.last_report_at is not None
        and node.last_report_at >= node.connected_at
    )


def unconfirmed_switches(session: Session, nodes: Sequence[NodeLike]) -> dict[str, Unconfirmed]:
    """For each gone node: the switch it may have made after its last report, if any."""
    gone = {n.name: n for n in nodes if n.status != NodeStatus.PENDING and not is_current(n)}
    if not gone:
        return {}
    latest: dict[str, tuple[DeploymentNode, str]] = {}
    statement = (
        select(DeploymentNode, Deployment.release_digest)
        .join(Deployment, Deployment.id == DeploymentNode.deployment_id)
        .where(DeploymentNode.node_name.in_(gone), DeploymentNode.phase != P.OFFLINE)
        .order_by(DeploymentNode.deployment_id.desc())
    )
    for row, release_digest in session.execute(statement):
        latest.setdefault(row.node_name, (row, release_digest))
    failed = [name for name, (row, _) in latest.items() if row.phase in _FAILED_SWITCH]
    reports = _last_reports(session, failed)
    found = {}
    for name, (row, release_digest) in latest.items():
        unconfirmed = _unconfirmed(gone[name], row, release_digest, reports.get(name))
        if unconfirmed is not None:
            found[name] = unconfirmed
    return found


def _last_reports(session: Session, names: list[str]) -> dict[str, str | None]:
    """The last report of each named node (read only where a failed switch needs it)."""
    if not names:
        return {}
    rows = session.execute(select(Node.name, Node.last_report).where(Node.name.in_(names)))
    return {row.name: row.last_report for row in rows}


def _unconfirmed(
    node: NodeLike, row: DeploymentNode, release_digest: str, last_report: str | None
) -> Unconfirmed | None:
    if row.phase in _FAILED_SWITCH:
        if _reported_after(node, row) or _acked(last_report, row):
            return None
    elif row.phase not in _UNCONFIRMED:
        return None
    digests = tuple(dict.fromkeys((node.active_digest, row.previous_digest, release_digest)))
    if len(digests) < 2:  # every candidate is the release it last reported (a re-stage)
        return None
    return Unconfirmed(row.deployment_id, row.phase, digests)


def _reported_after(node: NodeLike, row: DeploymentNode) -> bool:
    """The agent reconnected (and reported) after the row's failure was recorded."""
    return (
        node.connected_at is not None
        and node.last_report_at is not None
        and node.connected_at > row.updated_at
        and node.last_report_at >= node.connected_at
    )


def _acked(last_report: str | None, row: DeploymentNode) -> bool:
    """The node's last report was the agent's own answer that gave the row its phase."""
    report: dict[str, Any] = json.loads(last_report) if last_report else {}
    ack: dict[str, Any] = report.get("ack") or {}
    return ack.get("deployment_id") == row.deployment_id and ack.get("phase") == row.phase


def mixed_reasons(
    nodes: Sequence[NodeLike],
    names: dict[str, str],
    unconfirmed: dict[str, Unconfirmed],
    now: datetime | None,
) -> list[str]:
    """Why the fleet is MIXED: nodes on other releases, or a switch that may have gone unseen."""

    def name(digest: str | None) -> str:
        return names.get(digest or "", digest or "nothing")

    reasons = []
    by_group: dict[str, set[str | None]] = {}
    for node in nodes:
        if node.status != NodeStatus.ENROLLED:
            continue
        if (maybe := unconfirmed.get(node.name)) is not None:
            what = "commit" if maybe.phase in (P.COMMITTING, P.COMMIT_FAILED) else "rollback"
            reasons.append(
                f"{node.name} may run any of {', '.join(name(d) for d in maybe.digests)}: "
                f"its agent went away before confirming the {what} of deployment "
                f"{maybe.deployment_id} (last report {ago(node.last_report_at, now)})"
            )
            continue
        by_group.setdefault(node.group_name, set()).add(node.active_digest)
        if node.desired_digest and node.active_digest != node.desired_digest:
            have, want = name(node.active_digest), name(node.desired_digest)
            if is_current(node):
                reasons.append(f"{node.name} runs {have}, the fleet runs {want}")
            else:
                reasons.append(
                    f"{node.name} last reported {have} ({ago(node.last_report_at, now)}), "
                    f"the fleet runs {want}"
                )
    for group, digests in by_group.items():
        if len(digests) > 1 and not reasons:
            shown = ", ".join(sorted(name(d) for d in digests))
            reasons.append(f"group {group} runs {len(digests)} releases: {shown}")
    return reasons


def unknown_reasons(nodes: list[Node], now: datetime) -> list[str]:
    """One reason per node whose agent is gone, with when it was last heard."""
    return [
        f"{n.name} is UNKNOWN: "
        + (
            "its agent has just connected and not reported yet"
            if n.connected
            else "its agent is not connected"
        )
        + f"; last report {ago(n.last_report_at, now)}"
        for n in nodes
        if n.status in (NodeStatus.ENROLLED, NodeStatus.DRAINED) and not is_current(n)
    ]


def drift_reason(node: Node) -> str:
    """Why a node is DRIFTED, with its first finding."""
    findings = json.loads(node.drift_findings or "[]")
    first = f": {findings[0]['detail']}" if findings else ""
    return f"{node.name} DRIFTED ({node.drift_count} finding(s)){first}"


def halt_reason(node: Node) -> str:
    """What halted a node, and why."""
    why = f": {node.halt_reason}" if node.halt_reason else ""
    return f"{node.name} HALTED by {node.halt_source or HaltSource.KILL}{why}"


def degraded_reasons(nodes: list[Node]) -> list[str]:
    """Nodes whose service is not running healthily on their release."""
    reasons = []
    for node in nodes:
        if node.status == NodeStatus.PENDING:
            reasons.append(f"{node.name} has not enrolled yet")
        elif not is_current(node) or node.halted:
            continue  # listed as UNKNOWN (its service state is not known) or as HALTED
        elif node.active_digest and node.service_state not in (
            ServiceState.RUNNING,
            ServiceState.NONE,
        ):
            # "none": the release declares no service, so nothing is there to run
            reasons.append(
                f"{node.name}: service is {node.service_state}"
                + (f" ({node.service_detail})" if node.service_detail else "")
            )
    return reasons


def release_name(names: dict[str, str], digest: str | None) -> str | None:
    """The release ID of ``digest`` (the digest itself if the release is unknown)."""
    return None if digest is None else names.get(digest, digest)


def earliest(times: Any) -> datetime | None:
    """The earliest of ``times``, None ones left out (None if none is known)."""
    known = [t for t in times if t is not None]
    return min(known) if known else None


def age_s(since: datetime | None, now: datetime | None) -> float | None:
    """Seconds from ``since`` to ``now`` (None if either is unknown)."""
    return None if since is None or now is None else max(0.0, (now - since).total_seconds())


def ago(at: datetime | None, now: datetime | None) -> str:
    """``at`` as a readable age relative to ``now`` (e.g. ``12 s ago``)."""
    if at is None:
        return "never"
    age = age_s(at, now)
    return f"at {at.isoformat(timespec='seconds')}" if age is None else f"{age:.0f} s ago"
