"""Taking in one verified agent report: every fact it carries, stored in one transaction.

The agent session (``knightwatch.api.agents``) checks the report's signature,
nonce and sequence, then hands it here; what comes back says what the session
must do once the transaction has committed (send, halt, log).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from knightwatch.control.audits import record_audit_result
from knightwatch.control.drift import DriftChange, ingest_audit_status
from knightwatch.control.flags.evaluations import ingest_flag_state
from knightwatch.control.flags.values import values_for_node
from knightwatch.control.fleet import ingest_report
from knightwatch.control.guards import FleetHalt, ingest_alerts
from knightwatch.control.halt_reports import Message, ingest_safety
from knightwatch.control.retirement import pending_retires, record_retire_result
from knightwatch.errors import NotFoundError
from knightwatch.protocol import FlagValues, Report
from knightwatch.protocol.audit import Retire
from knightwatch.store import Node

__all__ = ["Ingested", "ingest_agent_report"]


@dataclass(frozen=True)
class Ingested:
    """What a stored report asks of its session, after the commit."""

    latched: list[Message] = field(default_factory=list)
    """Halts (or a missed re-arm) the node must hear first of all."""
    fleet_halts: list[FleetHalt] = field(default_factory=list)
    """A node's ``halt_fleet`` guard fired: halt the whole fleet."""
    drift_change: DriftChange | None = None
    """The node's drift state changed (worth a log line)."""
    retires: list[Retire] = field(default_factory=list)
    """Retire commands a (re)connecting node still owes an answer to."""
    flags: FlagValues | None = None
    """On a greeting: the flag values in force for the node, to send at once."""
    flags_acked: bool = False
    """The node's flags.json moved to another version (wake whoever waits for acks)."""
    fleet_changed: bool = False
    """The node's release changed: the fleet's conditions must be recorded before the commit."""
    greeting: bool = False
    """This was the session's first report."""


def ingest_agent_report(
    session: Session, node_name: str, report: Report, now: datetime, *, first: bool
) -> Ingested:
    """Store a node's report: state, audit status and results, alerts, halt answers.

    ``first`` is the session's first report (the greeting): it is answered
    with the node's latched halts and the retire commands it still owes.
    When ``fleet_changed`` comes back set, the caller records the fleet's
    conditions (once for every report it stores in the same transaction).
    """
    node = session.get(Node, node_name)
    if node is None:
        raise NotFoundError(f"no node {node_name!r}")
    fleet_changed = ingest_report(session, node, report, now)
    change = ingest_audit_status(session, node, report.state.audit, now)
    if report.audit is not None:
        record_audit_result(session, node_name, report.audit, now)
    if report.retire is not None:
        record_retire_result(session, node_name, report.retire, now)
    fleet_halts = ingest_alerts(session, node_name, report.alerts, now)
    latched = ingest_safety(session, node, report, now, greeting=first)
    retires = pending_retires(session, node_name) if first else []
    flags_acked = ingest_flag_state(session, node, report.state, now)
    flags = values_for_node(session, node) if first else None
    return Ingested(latched, fleet_halts, change, retires, flags, flags_acked, fleet_changed, first)
