"""The fleet's status as shown: its state, the reasons, how long each has held, every node.

:func:`fleet_status` only reads (a pure read: one snapshot, no writes); the
ages it shows are counted from where the conditions were recorded
(:func:`knightwatch.control.fleet.record_fleet_conditions`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from knightwatch.control.fleet_conditions import (
    Unconfirmed,
    age_s,
    degraded_reasons,
    drift_reason,
    earliest,
    halt_reason,
    is_current,
    live_nodes,
    mixed_reasons,
    release_name,
    release_names,
    unconfirmed_switches,
    unknown_reasons,
)
from knightwatch.plain import plain_data
from knightwatch.store import Fleet, Node
from knightwatch.store.queries import FLEET_ID, active_deployment
from knightwatch.vocabulary import DriftState
from knightwatch.vocabulary import NodeStatus as Standing

__all__ = ["FleetState", "FleetStatus", "LastKnown", "NodeLiveness", "NodeStatus", "fleet_status"]


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
    processes: dict[str, Any] = field(default_factory=dict)
    """How the node accounts for its service's processes, as last reported: ``accounting``
    (``exact (cgroup v1|v2)`` or ``best effort (no cgroup)``) and ``cgroup`` (path,
    members, memory_bytes, oom_kills, pids_limit_hits; None while no service runs), and
    ``adoption`` when the agent found a service left running at its start: whether it
    adopted it or restarted it, and why."""
    halt_reason: str | None = None
    halted_since: datetime | None = None
    agent_version: str | None = None
    """The knightwatch version of the node's agent as of its last session (``0.1.x``: one
    that states none, i.e. speaks protocol 1; None: it never connected)."""
    agent_protocol: int | None = None
    """The protocol version of that session."""
    refused_at: datetime | None = None
    refusal: str | None = None
    """Why an agent of this node was refused at connect, when that happened after its
    last accepted session (an older refusal is history: None)."""
    refused_age_s: float | None = None
    """How long ago that refusal was recorded (a retrying agent's is at most 30 s old)."""


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
        return plain_data(self)


def fleet_status(session: Session, now: datetime) -> FleetStatus:
    """Compute the fleet's state from the nodes' last reports; read only (writes nothing)."""
    nodes = live_nodes(session)
    names = release_names(session)
    fleet = session.get(Fleet, FLEET_ID)  # not get_fleet: a read never inserts the row
    deployment = active_deployment(session)
    unconfirmed = unconfirmed_switches(session, nodes)
    mixed = mixed_reasons(nodes, names, unconfirmed, now)
    mixed_since = fleet.mixed_since if mixed and fleet else None  # a stale record is ignored
    unknown = unknown_reasons(nodes, now)
    degraded = degraded_reasons(nodes)
    drifted_nodes = [n for n in nodes if n.drift_state == DriftState.DRIFTED]
    halted_nodes = [n for n in nodes if n.halted]
    drifted_since = earliest(n.drift_since for n in drifted_nodes)
    halted_since = earliest(n.halted_since for n in halted_nodes)
    reasons = [
        *(halt_reason(n) for n in halted_nodes),
        *(drift_reason(n) for n in drifted_nodes),
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
        desired_release=release_name(names, fleet.desired_digest if fleet else None),
        previous_release=release_name(names, fleet.previous_digest if fleet else None),
        mixed_since=mixed_since,
        mixed_for_s=age_s(mixed_since, now),
        deployment_id=deployment.id if deployment else None,
        drifted_since=drifted_since,
        drifted_for_s=age_s(drifted_since, now),
        halted_since=halted_since,
        halted_for_s=age_s(halted_since, now),
        nodes=[_node_status(n, names, unconfirmed.get(n.name), now) for n in nodes],
    )


def _node_status(
    node: Node, names: dict[str, str], unconfirmed: Unconfirmed | None, now: datetime
) -> NodeStatus:
    age = age_s(node.last_report_at, now)
    current = is_current(node)
    if node.status == Standing.PENDING:
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
    reported = _reported_state(node)
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
        audit=_audit_summary(reported),
        processes=_processes(reported) if current else {},
        halted=node.halted,
        halt_source=node.halt_source,
        halt_reason=node.halt_reason,
        halted_since=node.halted_since,
        agent_version=node.agent_version,
        agent_protocol=node.agent_protocol,
        **_refusal(node, now),
    )


def _refusal(node: Node, now: datetime) -> dict[str, Any]:
    """The node's last refusal at connect and its age, unless an agent was accepted since."""
    refused = node.refused_at
    if refused is None or (node.connected_at is not None and node.connected_at > refused):
        return {}
    return {"refused_at": refused, "refusal": node.refusal, "refused_age_s": age_s(refused, now)}


def _reported_state(node: Node) -> dict[str, Any]:
    """The ``state`` of the node's last report, parsed once for every view of it."""
    if not node.last_report:
        return {}
    state: dict[str, Any] = json.loads(node.last_report).get("state", {})
    return state


def _processes(reported: dict[str, Any]) -> dict[str, Any]:
    """The service's process accounting and cgroup, from the node's last report."""
    service = reported.get("service", {})
    if service.get("accounting") is None:
        return {}  # an agent from before cgroups, or no report: it does not say
    found = {"accounting": service["accounting"], "cgroup": service.get("cgroup")}
    if service.get("adoption"):
        found["adoption"] = service["adoption"]
    return found


def _audit_summary(reported: dict[str, Any]) -> dict[str, Any]:
    if not reported:
        return {}
    audit = reported.get("audit", {})
    keys = ("watching", "files", "last_sweep_at", "last_process_check_at")
    return {key: audit.get(key) for key in (*keys, "last_functional_check_at")}
