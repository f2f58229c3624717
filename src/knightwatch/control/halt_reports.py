"""What agents report of the kill switch: their latch, halt and re-arm answers, own halts.

Every report carries the node's :class:`~knightwatch.protocol.HaltState`; a
report may also answer a halt (:class:`~knightwatch.protocol.HaltAck`) or a
re-arm. A node that halted by itself (dead man's switch, guard) is recorded
as a halt of that node, requested by ``SOURCE:NODE``, once per halt. On a
greeting the node is told what it missed: its latched halts, or its re-arm.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.control import alerts
from knightwatch.control.halt_rows import active_halt_rows, detail_with, halt_detail, last_halt_id
from knightwatch.control.killswitch import DEAD_MAN_RULE, MAX_REASON
from knightwatch.protocol import Halt as HaltMessage
from knightwatch.protocol import HaltAck, HaltState, Rearm, RearmAck, Report
from knightwatch.store import Halt, HaltNode, Node
from knightwatch.vocabulary import HaltSource, Severity

__all__ = [
    "Message",
    "ingest_halt_state",
    "ingest_safety",
    "messages_on_connect",
    "record_halt_ack",
    "record_rearm_ack",
    "stale_latch_rearm",
]

Message = HaltMessage | Rearm


def ingest_safety(
    session: Session, node: Node, report: Report, now: datetime, *, greeting: bool
) -> list[Message]:
    """Take in a report's halt state, halt and re-arm answers; on a greeting, what to send."""
    ingest_halt_state(session, node, report.state.halt, now)
    if report.halt is not None:
        record_halt_ack(session, node.name, report.halt, now)
    if report.rearm is not None:
        record_rearm_ack(session, node.name, report.rearm, now)
    if greeting:
        return messages_on_connect(session, node, report.state.halt)
    return stale_latch_rearm(session, node, report.state.halt)


def stale_latch_rearm(session: Session, node: Node, reported: HaltState) -> list[Message]:
    """Re-arm a node still latched on a halt that was lifted (it saw the halt after the lift).

    A halt re-sent to a reconnecting node can cross its lift on the wire; the
    node then latches a halt nobody holds any more. Every report says which
    halt holds it, so the first one after that gets the re-arm it missed.
    """
    if not reported.halted or reported.halt_id is None:
        return []
    halt = session.get(Halt, reported.halt_id)
    if halt is None or halt.lifted_at is None or list(active_halt_rows(session, {node.name})):
        return []
    reason = halt.lift_reason or _detail_rearm_reason(session, node.name, halt.id)
    return [Rearm(halt_id=halt.id, reason=reason)]


def ingest_halt_state(session: Session, node: Node, state: HaltState, now: datetime) -> None:
    """Mirror the node's reported latch on its row; record (and alert on) a halt of its own."""
    if not state.halted:
        if node.halted and not list(active_halt_rows(session, {node.name})):
            node.halted, node.halt_source, node.halt_reason, node.halted_since = (
                False,
                None,
                None,
                None,
            )
        return
    source = state.source or HaltSource.KILL
    since = state.since or node.halted_since or now
    unchanged = node.halted and node.halt_source == source and node.halted_since == since
    node.halted, node.halt_source, node.halt_reason = True, source, state.reason
    node.halted_since = since
    if not unchanged and state.halt_id is None and source != HaltSource.KILL:
        _record_own_halt(
            session, node, source, state.reason or f"halted by its {source}", since, now
        )


def record_halt_ack(session: Session, node: str, ack: HaltAck, now: datetime) -> None:
    """Record a node's acknowledgement of a halt (the first one counts)."""
    row = session.get(HaltNode, (ack.halt_id, node))
    if row is None or row.acked_at is not None:
        return
    row.received_at, row.halted_at, row.acked_at = ack.received_at, ack.halted_at, now
    row.detail = detail_with(row, pids=ack.stopped_pids, detail=ack.detail)


def record_rearm_ack(session: Session, node: str, ack: RearmAck, now: datetime) -> None:
    """Record a node's answer to a re-arm: whether its service started again."""
    row = session.get(HaltNode, (ack.halt_id, node))
    if row is None:
        return
    rearm = {**halt_detail(row).get("rearm", {})}
    rearm.update(
        acked_at=now.isoformat(),
        rearmed_at=ack.rearmed_at.isoformat(),
        started=ack.started,
        detail=ack.detail,
    )
    row.detail = detail_with(row, rearm=rearm)


def messages_on_connect(session: Session, node: Node, reported: HaltState) -> list[Message]:
    """What a (re)connecting node must be sent: its latched halts, or the re-arm it missed."""
    rows = list(active_halt_rows(session, {node.name}))
    messages: list[Message] = [
        HaltMessage(halt_id=halt.id, reason=halt.reason, issued_at=halt.issued_at)
        for row, halt in rows
        if row.acked_at is None or not reported.halted
    ]
    if not rows and reported.halted:
        halt_id = reported.halt_id or last_halt_id(session, node.name)
        lifted = session.get(Halt, halt_id) if halt_id is not None else None
        if lifted is not None:
            reason = lifted.lift_reason or _detail_rearm_reason(session, node.name, lifted.id)
            messages.append(Rearm(halt_id=lifted.id, reason=reason))
    return messages


def _detail_rearm_reason(session: Session, node: str, halt_id: int) -> str:
    row = session.get(HaltNode, (halt_id, node))
    rearm = halt_detail(row).get("rearm", {}) if row is not None else {}
    return str(rearm.get("reason") or "re-armed")


def _record_own_halt(
    session: Session, node: Node, source: str, reason: str, since: datetime, now: datetime
) -> None:
    """Record a halt the node made by itself (dead man's switch, guard), once per halt."""
    by = f"{source}:{node.name}"
    seen = session.scalars(
        select(Halt.id).where(Halt.requested_by == by, Halt.issued_at == since).limit(1)
    ).first()
    if seen is not None:
        return
    halt = Halt(selector=node.name, reason=reason[:MAX_REASON], requested_by=by, issued_at=since)
    session.add(halt)
    session.flush()
    detail = json.dumps({"detail": f"halted by its {source}", "pids": []})
    session.add(
        HaltNode(
            halt_id=halt.id,
            node_name=node.name,
            received_at=since,
            halted_at=since,
            acked_at=now,
            detail=detail,
        )
    )
    if source == HaltSource.DEAD_MAN:
        alerts.fire(
            session,
            rule=DEAD_MAN_RULE,
            node=node.name,
            severity=Severity.CRITICAL,
            summary=f"{node.name} halted its service by its dead man's switch",
            detail=reason,
            now=now,
        )
