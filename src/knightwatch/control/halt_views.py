"""What the kill switch shows: a halt with every node's acknowledgement, and the list of halts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from knightwatch.control.halt_rows import halt_detail
from knightwatch.errors import NotFoundError
from knightwatch.plain import plain_data
from knightwatch.store import Halt, HaltNode, Node

__all__ = ["HaltReport", "NodeHalt", "halt_report", "list_halts", "unacknowledged_count"]


@dataclass(frozen=True)
class NodeHalt:
    """One node's part in a halt."""

    node: str
    connected: bool
    acknowledged: bool
    received_at: datetime | None
    halted_at: datetime | None
    acked_at: datetime | None
    time_to_halt_ms: float | None
    """``halted_at - issued_at`` (0 for a node that was halted already)."""
    stopped_pids: list[int]
    detail: str
    rearmed_at: datetime | None
    rearm: dict[str, Any] | None


@dataclass(frozen=True)
class HaltReport:
    """A halt and every node's acknowledgement so far."""

    halt_id: int
    selector: str | None
    reason: str
    requested_by: str
    issued_at: datetime
    active: bool
    lifted_at: datetime | None
    lifted_by: str | None
    lift_reason: str | None
    complete: bool
    """Every node acknowledged."""
    unacknowledged: list[str]
    max_time_to_halt_ms: float | None
    nodes: list[NodeHalt] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the report as plain JSON data."""
        return plain_data(self)


def halt_report(session: Session, halt_id: int) -> HaltReport:
    """A halt and every node's acknowledgement as of now."""
    halt = session.get(Halt, halt_id)
    if halt is None:
        raise NotFoundError(f"no halt {halt_id}", hint="list halts: GET /api/v1/halts")
    rows = list(
        session.scalars(
            select(HaltNode).where(HaltNode.halt_id == halt_id).order_by(HaltNode.node_name)
        )
    )
    connected = _connected(session, [r.node_name for r in rows])
    nodes = [_node_halt(halt, row, connected.get(row.node_name, False)) for row in rows]
    waiting = [n.node for n in nodes if not n.acknowledged]
    times = [n.time_to_halt_ms for n in nodes if n.time_to_halt_ms is not None]
    return HaltReport(
        halt_id=halt.id,
        selector=halt.selector,
        reason=halt.reason,
        requested_by=halt.requested_by,
        issued_at=halt.issued_at,
        active=halt.lifted_at is None,
        lifted_at=halt.lifted_at,
        lifted_by=halt.lifted_by,
        lift_reason=halt.lift_reason,
        complete=not waiting,
        unacknowledged=waiting,
        max_time_to_halt_ms=max(times) if times else None,
        nodes=nodes,
    )


def unacknowledged_count(session: Session, halt_id: int) -> int:
    """How many nodes have not acknowledged halt ``halt_id`` yet (one indexed count)."""
    statement = (
        select(func.count())
        .select_from(HaltNode)
        .where(HaltNode.halt_id == halt_id, HaltNode.acked_at.is_(None))
    )
    return int(session.scalar(statement) or 0)


def list_halts(session: Session, *, active: bool | None = None, limit: int = 100) -> list[Any]:
    """Halts, newest first (only active or only lifted ones if ``active`` says so)."""
    statement = select(Halt).order_by(Halt.id.desc()).limit(max(1, min(limit, 1000)))
    if active is not None:
        statement = statement.where(
            Halt.lifted_at.is_(None) if active else Halt.lifted_at.is_not(None)
        )
    found = []
    for halt in session.scalars(statement):
        rows = list(session.scalars(select(HaltNode).where(HaltNode.halt_id == halt.id)))
        found.append(
            {
                "halt_id": halt.id,
                "selector": halt.selector,
                "reason": halt.reason,
                "requested_by": halt.requested_by,
                "issued_at": halt.issued_at,
                "active": halt.lifted_at is None,
                "lifted_at": halt.lifted_at,
                "lifted_by": halt.lifted_by,
                "nodes": sorted(r.node_name for r in rows),
                "acknowledged": sum(1 for r in rows if r.acked_at is not None),
            }
        )
    return found


def _connected(session: Session, names: list[str]) -> dict[str, bool]:
    if not names:
        return {}
    rows = session.execute(select(Node.name, Node.connected).where(Node.name.in_(names)))
    return {name: bool(connected) for name, connected in rows}


def _node_halt(halt: Halt, row: HaltNode, connected: bool) -> NodeHalt:
    detail = halt_detail(row)
    took = None
    if row.halted_at is not None:
        took = max(0.0, (row.halted_at - halt.issued_at).total_seconds() * 1000)
    return NodeHalt(
        node=row.node_name,
        connected=connected,
        acknowledged=row.acked_at is not None,
        received_at=row.received_at,
        halted_at=row.halted_at,
        acked_at=row.acked_at,
        time_to_halt_ms=took,
        stopped_pids=[int(p) for p in detail.get("pids", [])],
        detail=str(detail.get("detail", "")),
        rearmed_at=row.rearmed_at,
        rearm=detail.get("rearm"),
    )
