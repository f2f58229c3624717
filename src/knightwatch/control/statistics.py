"""Figures about the fleet, read from the store at one instant (for /metrics and dashboards).

:func:`fleet_statistics` returns a frozen record: the fleet state and how
long the fleet has been MIXED and DRIFTED, node counts by drift, connection
and halt, each node's connection and last report's age, deployments by kind
and state, active halts and every node's time to halt, and alerts by state
and severity.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from knightwatch.control.fleet_status import FleetState, NodeLiveness, NodeStatus, fleet_status
from knightwatch.store import Alert, Deployment, Halt, HaltNode
from knightwatch.vocabulary import DriftState
from knightwatch.vocabulary import NodeStatus as Standing

__all__ = ["FleetStatistics", "NodeFigures", "fleet_statistics"]


@dataclass(frozen=True)
class NodeFigures:
    """One node (not retired), as the control plane last heard of it."""

    name: str
    group: str
    connected: bool
    last_report_age_s: float | None
    """None when the node never reported."""
    behind: bool
    """Enrolled, told which release to run, and not running it (left behind by a deploy)."""


@dataclass(frozen=True)
class FleetStatistics:
    """What the control plane knows about the fleet, counted."""

    state: FleetState
    nodes: dict[tuple[str, bool, bool | None], int]
    """(drift_state, connected, halted) → number of not retired nodes.

    For a node whose agent is gone, drift_state is ``unknown`` and halted None:
    its last report's values are not facts about now."""
    deployments: dict[tuple[str, str], int]
    """(kind, state) → number of deployments."""
    halts_active: int
    times_to_halt_s: tuple[float, ...]
    """For each node that confirmed a halt: seconds from the halt's issue to its service gone."""
    alerts: dict[tuple[str, str], int]
    """(state, severity) → number of alerts."""
    mixed_for_s: float | None = None
    """Seconds since the nodes began to run different releases (None while they do not)."""
    drifted_for_s: float | None = None
    """Seconds since the oldest drift still present on a node began (None without drift)."""
    node_figures: tuple[NodeFigures, ...] = ()
    condition_ages_s: dict[str, float] = field(default_factory=dict)
    """mixed / drifted / halted → seconds since it began (present conditions only)."""


def fleet_statistics(session: Session, now: datetime) -> FleetStatistics:
    """Count everything once, inside the caller's transaction."""
    status = fleet_status(session, now)
    nodes: Counter[tuple[str, bool, bool | None]] = Counter(
        (n.drift_state, True, n.halted)
        if n.state is NodeLiveness.CONNECTED
        else (DriftState.UNKNOWN, n.connected, None)
        for n in status.nodes
    )
    ages = {
        "mixed": status.mixed_for_s,
        "drifted": status.drifted_for_s,
        "halted": status.halted_for_s,
    }
    return FleetStatistics(
        state=status.state,
        nodes=dict(nodes),
        deployments=_grouped(session, Deployment.kind, Deployment.state),
        halts_active=session.scalar(
            select(func.count()).select_from(Halt).where(Halt.lifted_at.is_(None))
        )
        or 0,
        times_to_halt_s=_times_to_halt(session),
        alerts=_grouped(session, Alert.state, Alert.severity),
        mixed_for_s=status.mixed_for_s,
        drifted_for_s=status.drifted_for_s,
        node_figures=tuple(
            NodeFigures(
                name=n.name,
                group=n.group,
                connected=n.connected,
                last_report_age_s=n.last_report_age_s,
                behind=n.status == Standing.ENROLLED
                and n.desired_digest is not None
                and _known_digest(n) != n.desired_digest,
            )
            for n in status.nodes
        ),
        condition_ages_s={k: v for k, v in ages.items() if v is not None},
    )


def _known_digest(node: NodeStatus) -> str | None:
    """What the node runs: reported now, or last reported when its agent is gone."""
    if node.last_known is not None:
        return node.last_known.active_digest
    return node.active_digest


def _grouped(
    session: Session, first: InstrumentedAttribute[str], second: InstrumentedAttribute[str]
) -> dict[tuple[str, str], int]:
    statement = select(first, second, func.count()).group_by(first, second)
    return {(a, b): n for a, b, n in session.execute(statement)}


def _times_to_halt(session: Session) -> tuple[float, ...]:
    statement = (
        select(Halt.issued_at, HaltNode.halted_at)
        .join(HaltNode, HaltNode.halt_id == Halt.id)
        .where(HaltNode.halted_at.is_not(None))
    )
    return tuple(
        max(0.0, (halted - issued).total_seconds())
        for issued, halted in session.execute(statement)
        if halted is not None
    )
