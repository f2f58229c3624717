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
  tick), never where it is read: :func:`~knightwatch.control.fleet_status.fleet_status` only reads.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.canonical import canonical_json
from knightwatch.control.fleet_conditions import (
    condition_facts,
    is_current,
    lock_fleet,
    mixed_reasons,
    release_names,
    unconfirmed_switches,
)
from knightwatch.errors import NotFoundError
from knightwatch.protocol import Report
from knightwatch.store import Node

__all__ = [
    "ingest_report",
    "mark_all_disconnected",
    "mark_connected",
    "mark_disconnected",
    "record_fleet_conditions",
    "record_refusal",
]


def ingest_report(session: Session, node: Node, report: Report, now: datetime) -> bool:
    """Copy a verified report's facts onto the node's row; True if the fleet may have changed.

    The caller holds the fleet row (:func:`lock_fleet`, taken before any node
    row) and records the fleet's conditions (:func:`record_fleet_conditions`)
    once for all the reports it stores together: a deployment changes every
    node's release, and recording them per report is quadratic in the fleet.
    """
    state = report.state
    # Only a new active release can make the fleet mixed at once. A session's first
    # report with the release the row already holds turns a last-known fact into a
    # current one; the background tick records that within a second, so a reconnect
    # storm of 10,000 agents does not recompute the fleet 10,000 times.
    changes_fleet = node.active_digest != state.active_digest
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
    return changes_fleet


def mark_connected(
    session: Session,
    name: str,
    *,
    nonce: str,
    now: datetime,
    agent_version: str,
    protocol: int,
) -> Node:
    """Record that node ``name``'s agent (``agent_version``, ``protocol``) connected.

    The fleet's conditions do not change here: until the agent's first report
    its facts stay last-known (see :func:`is_current`), and that report is
    where they are recorded.
    """
    node = _get_node(session, name)
    node.connected = True
    node.connected_at = now
    node.session_nonce = nonce
    node.last_seq = 0
    node.agent_version = agent_version
    node.agent_protocol = protocol
    return node


def record_refusal(session: Session, name: str, *, reason: str, now: datetime) -> None:
    """Record that node ``name``'s agent was refused at connect, and why; nothing else changes.

    The node keeps its session (a live one goes on), its facts and its agent's
    version: the refused agent never became its agent.
    """
    node = _get_node(session, name)
    node.refused_at = now
    node.refusal = reason


def mark_disconnected(
    session: Session, name: str, *, now: datetime, record_conditions: bool = True
) -> bool:
    """Record that node ``name``'s agent is gone: from now on its facts are last-known only.

    Returns whether the fleet's conditions may have changed. With
    ``record_conditions`` False the caller (a batch of them) holds the fleet
    row already and records them once for all.
    """
    if record_conditions:
        lock_fleet(session, now)
    node = _get_node(session, name)
    reported = is_current(node)  # a session that never reported changed nothing it knew
    node.connected = False
    node.disconnected_at = now
    if reported and record_conditions:
        record_fleet_conditions(session, now)
    return reported


def mark_all_disconnected(session: Session, *, now: datetime) -> int:
    """Record every connected node's agent as gone (the control plane stops); return how many."""
    lock_fleet(session, now)
    nodes = list(session.scalars(select(Node).where(Node.connected.is_(True))))
    reported = any(is_current(node) for node in nodes)
    for node in nodes:
        node.connected = False
        node.disconnected_at = now
    if reported:
        record_fleet_conditions(session, now)
    return len(nodes)


def record_fleet_conditions(session: Session, now: datetime) -> None:
    """Record when the fleet became MIXED (or stopped being): call it where the fleet changes.

    Locks the fleet row (see :func:`lock_fleet`) and writes it only when the
    answer changed. (DRIFTED and HALTED begin on a node's row:
    ``drift_since`` and ``halted_since`` are set where the reports and halts
    are ingested.)
    """
    fleet = lock_fleet(session, now)
    nodes = condition_facts(session)
    names = release_names(session)
    mixed = bool(mixed_reasons(nodes, names, unconfirmed_switches(session, nodes), None))
    if mixed and fleet.mixed_since is None:
        fleet.mixed_since = now
    elif not mixed and fleet.mixed_since is not None:
        fleet.mixed_since = None


def _get_node(session: Session, name: str) -> Node:
    node = session.get(Node, name)
    if node is None:  # pragma: no cover - the agent authenticated as this node
        raise NotFoundError(f"no node {name!r}", hint="list nodes with: knightwatch status")
    return node
