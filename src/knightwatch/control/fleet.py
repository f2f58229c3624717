"""Fleet state: what every node reported, how old that is, and what it means for the fleet.

The control plane is the only writer of desired state; agents report actual
state. Any difference between the two is a visible condition — DRIFTED,
MIXED, UNKNOWN or DEGRADED — never silently "fixed". Truth over tidiness:

- A node whose agent is connected shows its last report as current, with the
  report's age. A node whose agent is gone is UNKNOWN: its service state and
  pid are ``unknown``/``None``, and what it last reported is under
  ``last_known``, with that report's time and age.
- A node that went away while a Commit or a Rollback to it was unconfirmed
  (its deployment row is COMMITTING or ROLLING_BACK, or failed without the
  agent saying so) may have switched: it is shown as possibly on any of the
  releases involved (``possible_releases``), never confidently on the old one,
  and the fleet is MIXED.
- A condition's age is counted from when it began, recorded where the fleet
  changes (:func:`record_fleet_conditions`: report ingest, connect and
  disconnect, the orchestrator's switch, drain/resume/retire, the server
  tick), never where it is read: :func:`fleet_status` only reads.
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
from knightwatch.control.states import NodePhase
from knightwatch.errors import NotFoundError
from knightwatch.protocol import Report
from knightwatch.store import Deployment, DeploymentNode, Fleet, Node, Release
from knightwatch.store.queries import FLEET_ID, active_deployment, get_fleet

__all__ = [
    "FleetState",
    "FleetStatus",
    "LastKnown",
    "NodeLiveness",
    "NodeStatus",
    "fleet_status",
    "ingest_report",
    "mark_connected",
    "mark_disconnected",
    "record_fleet_conditions",
]

P = NodePhase
_UNCONFIRMED = frozenset({P.COMMITTING, P.ROLLING_BACK})
"""A Commit or Rollback was issued and no answer came: it may have been applied."""
_FAILED_SWITCH = frozenset({P.COMMIT_FAILED, P.ROLLBACK_FAILED})
"""Failed by the agent's ack (known) or by a disconnect or timeout (unknown)."""


class FleetState(StrEnum):
    """The one-word answer to "is every node running exactly release X?"."""

    CONVERGED = "CONVERGED"
    HALTED = "HALTED"
    DRIFTED = "DRIFTED"
    MIXED = "MIXED"
    DEPLOYING = "DEPLOYING"
    UNKNOWN = "UNKNOWN"
    """Some node's agent is gone: what it runs now is not known."""
    DEGRADED = "DEGRADED"
    EMPTY = "EMPTY"


class NodeLiveness(StrEnum):
    """Whether a node's facts are current (its agent is connected) or only last known."""

    CONNECTED = "CONNECTED"
    UNKNOWN = "UNKNOWN"
    PENDING = "PENDING"
    """Never enrolled: nothing is known yet."""


@dataclass(frozen=True)
class LastKnown:
    """What a node's agent last reported, and when: shown for a node whose agent is gone."""

    reported_at: datetime | None
    age_s: float | None
    active_release: str | None
    active_digest: str | None
    service_state: str
    service_pid: int | None
    service_version: str | None
    service_detail: str | None


@dataclass(frozen=True)
class NodeStatus:
    """One node as the control plane knows it now: current facts or, if gone, last-known ones."""

    name: str
    group: str
    status: str
    connected: bool
    state: NodeLiveness
    """CONNECTED: the facts below are its latest report's; UNKNOWN: see ``last_known``."""
    active_release: str | None
    """None when the node is UNKNOWN (see ``last_known`` and ``possible_releases``)."""
    active_digest: str | None
    desired_digest: str | None
    service_state: str
    """``unknown`` when the node is UNKNOWN."""
    service_pid: int | None
    service_version: str | None
    service_detail: str | None
    last_report_at: datetime | None
    last_report_age_s: float | None
    disconnected_at: datetime | None
    last_known: LastKnown | None
    """The last report's facts, for a node whose agent is gone (None while connected)."""
    possible_releases: list[str]
    """Every release an UNKNOWN node may run after an unconfirmed switch (else empty)."""
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
    """The fleet's state, the reasons for it, how long each condition has held, and every node."""

    state: FleetState
    reasons: list[str]
    desired_release: str | None
    previous_release: str | None
    mixed_since: datetime | None
    """When the fleet became MIXED, as recorded at the change (None: not mixed, or not yet)."""
    mixed_for_s: float | None
    deployment_id: int | None
    drifted_since: datetime | None = None
    drifted_for_s: float | None = None
    halted_since: datetime | None = None
    halted_for_s: float | None = None
    nodes: list[NodeStatus] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the status as plain JSON data."""
        return asdict(self)


@dataclass(frozen=True)
class _Unconfirmed:
    """A switch that may have happened on a node whose agent went away before answering."""

    deployment_id: int
    phase: str
    digests: tuple[str | None, ...]


# -- change points (they write) ------------------------------------------------------------


def ingest_report(session: Session, node: Node, report: Report, now: datetime) -> None:
    """Copy a verified report's facts onto the node's row (and record a MIXED change)."""
    state = report.state
    first = not _is_current(node)  # this session's first report
    changes_fleet = first or node.active_digest != state.active_digest
    if changes_fleet:  # only these can change whether the fleet is mixed
        _lock_fleet(session, now)
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
    if changes_fleet:
        record_fleet_conditions(session, now)


def mark_connected(session: Session, name: str, *, nonce: str, now: datetime) -> Node:
    """Record that node ``name``'s agent connected with session ``nonce``.

    The fleet's conditions do not change here: until the agent's first report
    its facts stay last-known (see :func:`_is_current`), and that report is
    where they are recorded.
    """
    node = _get_node(session, name)
    node.connected = True
    node.connected_at = now
    node.session_nonce = nonce
    node.last_seq = 0
    return node


def mark_disconnected(session: Session, name: str, *, now: datetime) -> None:
    """Record that node ``name``'s agent is gone: from now on its facts are last-known only."""
    _lock_fleet(session, now)
    node = _get_node(session, name)
    node.connected = False
    node.disconnected_at = now
    record_fleet_conditions(session, now)


def record_fleet_conditions(session: Session, now: datetime) -> None:
    """Record when the fleet became MIXED (or stopped being): call it where the fleet changes.

    Locks the fleet row (see :func:`_lock_fleet`) and writes it only when the
    answer changed. (DRIFTED and HALTED begin on a node's row:
    ``drift_since`` and ``halted_since`` are set where the reports and halts
    are ingested.)
    """
    fleet = _lock_fleet(session, now)
    nodes = _live_nodes(session)
    names = _release_names(session)
    mixed = bool(_mixed_reasons(nodes, names, _unconfirmed_switches(session, nodes), None))
    if mixed and fleet.mixed_since is None:
        fleet.mixed_since = now
    elif not mixed and fleet.mixed_since is not None:
        fleet.mixed_since = None


# -- the read ---------------------------------------------------------------------------------


def fleet_status(session: Session, now: datetime) -> FleetStatus:
    """Compute the fleet's state from the nodes' last reports; read only (writes nothing)."""
    nodes = _live_nodes(session)
    names = _release_names(session)
    fleet = session.get(Fleet, FLEET_ID)  # not get_fleet: a read never inserts the row
    deployment = active_deployment(session)
    unconfirmed = _unconfirmed_switches(session, nodes)
    mixed = _mixed_reasons(nodes, names, unconfirmed, now)
    mixed_since = fleet.mixed_since if mixed and fleet else None  # a stale record is ignored
    unknown = _unknown_reasons(nodes, now)
    degraded = _degraded_reasons(nodes)
    drifted_nodes = [n for n in nodes if n.drift_state == "drifted"]
    halted_nodes = [n for n in nodes if n.halted]
    drifted_since = _earliest(n.drift_since for n in drifted_nodes)
    halted_since = _earliest(n.halted_since for n in halted_nodes)
    reasons = [
        *(_halt_reason(n) for n in halted_nodes),
        *(_drift_reason(n) for n in drifted_nodes),
        *mixed,
        *unknown,
    ]
    if deployment is not None:
        state = FleetState.DEPLOYING
        reasons = [f"deployment {deployment.id} is {deployment.state}", *reasons]
    elif not nodes:
        state = FleetState.EMPTY
    elif halted_nodes:
        state = FleetState.HALTED
    elif drifted_nodes:
        state = FleetState.DRIFTED
    elif mixed:
        state = FleetState.MIXED
    elif unknown:
        state = FleetState.UNKNOWN
    elif degraded:
        state = FleetState.DEGRADED
    else:
        state = FleetState.CONVERGED
    return FleetStatus(
        state=state,
        reasons=[*reasons, *degraded],
        desired_release=_name(names, fleet.desired_digest if fleet else None),
        previous_release=_name(names, fleet.previous_digest if fleet else None),
        mixed_since=mixed_since,
        mixed_for_s=_age(mixed_since, now),
        deployment_id=deployment.id if deployment else None,
        drifted_since=drifted_since,
        drifted_for_s=_age(drifted_since, now),
        halted_since=halted_since,
        halted_for_s=_age(halted_since, now),
        nodes=[_node_status(n, names, unconfirmed.get(n.name), now) for n in nodes],
    )


# -- helpers ----------------------------------------------------------------------------------


def _lock_fleet(session: Session, now: datetime) -> Fleet:
    """The fleet row, locked before any node row is written (the order every writer keeps).

    The orchestrator and drain/resume/retire lock the fleet row first, then
    write nodes; taking it here before this transaction's node changes are
    flushed keeps one lock order on PostgreSQL, so the two never deadlock.
    """
    with session.no_autoflush:
        return get_fleet(session, for_update=True, now=now)


def _get_node(session: Session, name: str) -> Node:
    node = session.get(Node, name)
    if node is None:  # pragma: no cover - the agent authenticated as this node
        raise NotFoundError(f"no node {name!r}", hint="list nodes with: knightwatch status")
    return node


def _live_nodes(session: Session) -> list[Node]:
    return list(session.scalars(select(Node).where(Node.status != "retired").order_by(Node.name)))


def _release_names(session: Session) -> dict[str, str]:
    rows = session.execute(select(Release.digest, Release.release_id))
    return {row.digest: row.release_id for row in rows}


def _is_current(node: Node) -> bool:
    """The node's facts are current: its agent is connected and has reported since."""
    return (
        node.connected
        and node.connected_at is not None
        and node.last_report_at is not None
        and node.last_report_at >= node.connected_at
    )


def _unconfirmed_switches(session: Session, nodes: list[Node]) -> dict[str, _Unconfirmed]:
    """For each gone node: the switch it may have made after its last report, if any."""
    gone = {n.name: n for n in nodes if n.status != "pending" and not _is_current(n)}
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
    found = {}
    for name, (row, release_digest) in latest.items():
        unconfirmed = _unconfirmed(gone[name], row, release_digest)
        if unconfirmed is not None:
            found[name] = unconfirmed
    return found


def _unconfirmed(node: Node, row: DeploymentNode, release_digest: str) -> _Unconfirmed | None:
    if row.phase in _FAILED_SWITCH:
        if _reported_after(node, row) or _acked(node, row):
            return None
    elif row.phase not in _UNCONFIRMED:
        return None
    digests = tuple(dict.fromkeys((node.active_digest, row.previous_digest, release_digest)))
    if len(digests) < 2:  # every candidate is the release it last reported (a re-stage)
        return None
    return _Unconfirmed(row.deployment_id, row.phase, digests)


def _reported_after(node: Node, row: DeploymentNode) -> bool:
    """The agent reconnected (and reported) after the row's failure was recorded."""
    return (
        node.connected_at is not None
        and node.last_report_at is not None
        and node.connected_at > row.updated_at
        and node.last_report_at >= node.connected_at
    )


def _acked(node: Node, row: DeploymentNode) -> bool:
    """The node's last report was the agent's own answer that gave the row its phase."""
    report: dict[str, Any] = json.loads(node.last_report) if node.last_report else {}
    ack: dict[str, Any] = report.get("ack") or {}
    return ack.get("deployment_id") == row.deployment_id and ack.get("phase") == row.phase


def _mixed_reasons(
    nodes: list[Node],
    names: dict[str, str],
    unconfirmed: dict[str, _Unconfirmed],
    now: datetime | None,
) -> list[str]:
    def name(digest: str | None) -> str:
        return names.get(digest or "", digest or "nothing")

    reasons = []
    by_group: dict[str, set[str | None]] = {}
    for node in nodes:
        if node.status != "enrolled":
            continue
        if (maybe := unconfirmed.get(node.name)) is not None:
            what = "commit" if maybe.phase in (P.COMMITTING, P.COMMIT_FAILED) else "rollback"
            reasons.append(
                f"{node.name} may run any of {', '.join(name(d) for d in maybe.digests)}: "
                f"its agent went away before confirming the {what} of deployment "
                f"{maybe.deployment_id} (last report {_ago(node.last_report_at, now)})"
            )
            continue
        by_group.setdefault(node.group_name, set()).add(node.active_digest)
        if node.desired_digest and node.active_digest != node.desired_digest:
            have, want = name(node.active_digest), name(node.desired_digest)
            if _is_current(node):
                reasons.append(f"{node.name} runs {have}, the fleet runs {want}")
            else:
                reasons.append(
                    f"{node.name} last reported {have} ({_ago(node.last_report_at, now)}), "
                    f"the fleet runs {want}"
                )
    for group, digests in by_group.items():
        if len(digests) > 1 and not reasons:
            shown = ", ".join(sorted(name(d) for d in digests))
            reasons.append(f"group {group} runs {len(digests)} releases: {shown}")
    return reasons


def _unknown_reasons(nodes: list[Node], now: datetime) -> list[str]:
    return [
        f"{n.name} is UNKNOWN: "
        + (
            "its agent has just connected and not reported yet"
            if n.connected
            else "its agent is not connected"
        )
        + f"; last report {_ago(n.last_report_at, now)}"
        for n in nodes
        if n.status in ("enrolled", "drained") and not _is_current(n)
    ]


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
        elif not _is_current(node) or node.halted:
            continue  # listed as UNKNOWN (its service state is not known) or as HALTED
        elif node.active_digest and node.service_state not in ("running", "none"):
            # "none": the release declares no service, so nothing is there to run
            reasons.append(
                f"{node.name}: service is {node.service_state}"
                + (f" ({node.service_detail})" if node.service_detail else "")
            )
    return reasons


def _node_status(
    node: Node, names: dict[str, str], unconfirmed: _Unconfirmed | None, now: datetime
) -> NodeStatus:
    age = _age(node.last_report_at, now)
    current = _is_current(node)
    if node.status == "pending":
        liveness = NodeLiveness.PENDING
    else:
        liveness = NodeLiveness.CONNECTED if current else NodeLiveness.UNKNOWN
    active_release = names.get(node.active_digest or "", node.active_digest)
    last_known = None
    if not current and node.last_report_at is not None:
        last_known = LastKnown(
            reported_at=node.last_report_at,
            age_s=age,
            active_release=active_release,
            active_digest=node.active_digest,
            service_state=node.service_state,
            service_pid=node.service_pid,
            service_version=node.service_version,
            service_detail=node.service_detail,
        )
    candidates = unconfirmed.digests if unconfirmed else ()
    possible = [names.get(d or "", d or "nothing") for d in candidates]
    return NodeStatus(
        name=node.name,
        group=node.group_name,
        status=node.status,
        connected=node.connected,
        state=liveness,
        active_release=active_release if current else None,
        active_digest=node.active_digest if current else None,
        desired_digest=node.desired_digest,
        service_state=node.service_state if current else "unknown",
        service_pid=node.service_pid if current else None,
        service_version=node.service_version if current else None,
        service_detail=node.service_detail if current else None,
        last_report_at=node.last_report_at,
        last_report_age_s=age,
        disconnected_at=None if current else node.disconnected_at,
        last_known=last_known,
        possible_releases=possible,
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


def _name(names: dict[str, str], digest: str | None) -> str | None:
    return None if digest is None else names.get(digest, digest)


def _earliest(times: Any) -> datetime | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


def _age(since: datetime | None, now: datetime | None) -> float | None:
    return None if since is None or now is None else max(0.0, (now - since).total_seconds())


def _ago(at: datetime | None, now: datetime | None) -> str:
    if at is None:
        return "never"
    age = _age(at, now)
    return f"at {at.isoformat(timespec='seconds')}" if age is None else f"{age:.0f} s ago"
