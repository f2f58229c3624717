"""The kill switch on the control plane: latched halts, their acknowledgements, re-arms (P5).

A halt is recorded durably — one :class:`~knightwatch.store.Halt` row and a
:class:`~knightwatch.store.HaltNode` row per selected node, and each node
marked halted — *before* the adapter sends anything; the adapter then sends
the one :class:`~knightwatch.protocol.Halt` to every connected node at once.
Each node's :class:`~knightwatch.protocol.HaltAck` records when it received
the halt and when waitpid confirmed its service gone (time to halt =
``halted_at - issued_at``). A node that was not connected gets the halt the
moment it reconnects: the halt is latched until a re-arm lifts it.

A node also halts by itself — its dead man's switch (an ``armed`` group
that lost the control plane for longer than T) or a runtime guard — and
says so in every report (:class:`~knightwatch.protocol.HaltState`). Such a
halt is recorded as a halt of that one node, requested by ``SOURCE:NODE``
(so a re-arm lifts it like any other), and a dead man's halt raises the
critical alert ``dead-man``.

Per node::

    armed ──issue──► halting ──HaltAck──► halted ──lift (re-arm)──► armed
      └──── the node's own dead-man / guard halt ───►┘

Stopping never needs approval; a re-arm is where change control adds one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from knightwatch.control import alerts
from knightwatch.control.policy import Action, Proposal, enforce
from knightwatch.errors import InvalidInputError, NotFoundError
from knightwatch.protocol import Halt as HaltMessage
from knightwatch.protocol import HaltAck, HaltState, Rearm, RearmAck, Report
from knightwatch.protocol.safety import HaltSource
from knightwatch.selection import matches_selector, parse_selector
from knightwatch.store import Halt, HaltNode, Node

__all__ = [
    "DEAD_MAN_RULE",
    "MAX_REASON",
    "HaltPlan",
    "HaltReport",
    "NodeHalt",
    "RearmPlan",
    "dead_man_seconds",
    "halt_report",
    "ingest_halt_state",
    "ingest_safety",
    "issue_halt",
    "lift_halts",
    "list_halts",
    "messages_on_connect",
    "record_halt_ack",
    "record_rearm_ack",
    "unacknowledged_count",
]

DEAD_MAN_RULE = "dead-man"
MAX_REASON = 1000
_HALTABLE = ("enrolled", "drained")  # a drained node takes no deployments, but it still halts
Message = HaltMessage | Rearm


@dataclass(frozen=True)
class HaltPlan:
    """A halt just recorded: the message, and which nodes get it now or on reconnect."""

    halt_id: int
    message: HaltMessage
    online: list[str]
    offline: list[str]


@dataclass(frozen=True)
class RearmPlan:
    """A re-arm just recorded: the halts it lifted and the Rearm each node gets."""

    lifted: list[int]
    messages: list[tuple[str, Rearm]]
    online: list[str]
    offline: list[str]


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
        return asdict(self)


# -- operator actions ---------------------------------------------------------------------


def issue_halt(
    session: Session,
    selector: str | None,
    reason: str,
    requested_by: str,
    now: datetime,
    *,
    source: HaltSource = "kill",
) -> HaltPlan:
    """Record a latched halt of every selected node; return the message to send to them all.

    ``source`` is what caused it (``kill``: an operator; ``guard``: a guard's
    ``halt_fleet``), recorded on every node it halts and carried to the agents.
    """
    reason = _reason(reason)
    nodes = _selected(session, selector)
    halt = Halt(selector=selector or None, reason=reason, requested_by=requested_by, issued_at=now)
    session.add(halt)
    session.flush()
    for node in nodes:
        session.add(HaltNode(halt_id=halt.id, node_name=node.name, detail=""))
        if not node.halted:
            node.halted, node.halt_source, node.halted_since = True, source, now
            node.halt_reason = reason
    message = HaltMessage(halt_id=halt.id, reason=reason, issued_at=now, source=source)
    online = [n.name for n in nodes if n.connected]
    return HaltPlan(halt.id, message, online, [n.name for n in nodes if not n.connected])


def lift_halts(
    session: Session, selector: str | None, reason: str, lifted_by: str, now: datetime
) -> RearmPlan:
    """Lift every active halt of the selected nodes; return the Rearm each of them gets.

    Refused (nothing changed) when no selected node is halted.
    """
    reason = _reason(reason)
    nodes = _selected(session, selector)
    enforce(session, Proposal(Action.REARM, nodes=tuple(nodes)))
    names = {n.name for n in nodes}
    lifted_for: dict[str, int] = {}
    touched: dict[int, Halt] = {}
    for row, halt in _active_rows(session, names):
        row.rearmed_at = now
        row.detail = _with(row, rearm={"by": lifted_by, "reason": reason, "at": now.isoformat()})
        lifted_for[row.node_name] = max(lifted_for.get(row.node_name, 0), halt.id)
        touched[halt.id] = halt
    targets = [n for n in nodes if n.name in lifted_for or n.halted]
    if not targets:
        raise InvalidInputError(
            f"no halted node matches {selector or 'the fleet'}: nothing to re-arm",
            hint="see which nodes are halted: knightwatch status",
        )
    session.flush()
    for halt in touched.values():
        if not list(_active_rows(session, None, halt_id=halt.id)):
            halt.lifted_at, halt.lifted_by, halt.lift_reason = now, lifted_by, reason
    messages = []
    for node in targets:
        halt_id = lifted_for.get(node.name) or _last_halt_id(session, node.name)
        if halt_id is not None:
            messages.append((node.name, Rearm(halt_id=halt_id, reason=reason)))
    online = [n.name for n in targets if n.connected]
    return RearmPlan(
        sorted(touched), messages, online, [n.name for n in targets if not n.connected]
    )


def dead_man_seconds(group: str, armed_groups: Sequence[str], seconds: float) -> float | None:
    """The dead man's period for a node of ``group`` (None: the group is not armed)."""
    return seconds if group in armed_groups else None


# -- what agents report -------------------------------------------------------------------


def ingest_safety(
    session: Session, node: Node, report: Report, now: datetime, *, greeting: bool
) -> list[Message]:
    """Take in a report's halt state, halt and re-arm answers; on a greeting, what to send."""
    ingest_halt_state(session, node, report.state.halt, now)
    if report.halt is not None:
        record_halt_ack(session, node.name, report.halt, now)
    if report.rearm is not None:
        record_rearm_ack(session, node.name, report.rearm, now)
    return messages_on_connect(session, node, report.state.halt) if greeting else []


def ingest_halt_state(session: Session, node: Node, state: HaltState, now: datetime) -> None:
    """Mirror the node's reported latch on its row; record (and alert on) a halt of its own."""
    if not state.halted:
        if node.halted and not list(_active_rows(session, {node.name})):
            node.halted, node.halt_source, node.halt_reason, node.halted_since = (
                False,
                None,
                None,
                None,
            )
        return
    source = state.source or "kill"
    since = state.since or node.halted_since or now
    unchanged = node.halted and node.halt_source == source and node.halted_since == since
    node.halted, node.halt_source, node.halt_reason = True, source, state.reason
    node.halted_since = since
    if not unchanged and state.halt_id is None and source != "kill":
        _record_own_halt(
            session, node, source, state.reason or f"halted by its {source}", since, now
        )


def record_halt_ack(session: Session, node: str, ack: HaltAck, now: datetime) -> None:
    """Record a node's acknowledgement of a halt (the first one counts)."""
    row = session.get(HaltNode, (ack.halt_id, node))
    if row is None or row.acked_at is not None:
        return
    row.received_at, row.halted_at, row.acked_at = ack.received_at, ack.halted_at, now
    row.detail = _with(row, pids=ack.stopped_pids, detail=ack.detail)


def record_rearm_ack(session: Session, node: str, ack: RearmAck, now: datetime) -> None:
    """Record a node's answer to a re-arm: whether its service started again."""
    row = session.get(HaltNode, (ack.halt_id, node))
    if row is None:
        return
    rearm = {**_detail(row).get("rearm", {})}
    rearm.update(
        acked_at=now.isoformat(),
        rearmed_at=ack.rearmed_at.isoformat(),
        started=ack.started,
        detail=ack.detail,
    )
    row.detail = _with(row, rearm=rearm)


def messages_on_connect(session: Session, node: Node, reported: HaltState) -> list[Message]:
    """What a (re)connecting node must be sent: its latched halts, or the re-arm it missed."""
    rows = list(_active_rows(session, {node.name}))
    messages: list[Message] = [
        HaltMessage(halt_id=halt.id, reason=halt.reason, issued_at=halt.issued_at)
        for row, halt in rows
        if row.acked_at is None or not reported.halted
    ]
    if not rows and reported.halted:
        halt_id = reported.halt_id or _last_halt_id(session, node.name)
        lifted = session.get(Halt, halt_id) if halt_id is not None else None
        if lifted is not None:
            reason = lifted.lift_reason or _detail_rearm_reason(session, node.name, lifted.id)
            messages.append(Rearm(halt_id=lifted.id, reason=reason))
    return messages


# -- reading ------------------------------------------------------------------------------


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


# -- helpers ------------------------------------------------------------------------------


def _reason(reason: str) -> str:
    text = " ".join(reason.split())
    if not text:
        raise InvalidInputError(
            "a reason is required (it is recorded)", hint='e.g. --reason "runaway orders"'
        )
    if len(reason) > MAX_REASON:
        raise InvalidInputError(
            f"the reason has {len(reason)} characters; at most {MAX_REASON} are kept",
            hint="say it in fewer words; link to the incident",
        )
    return reason.strip()


def _selected(session: Session, selector: str | None) -> list[Node]:
    terms = parse_selector(selector)
    statement = select(Node).where(Node.status.in_(_HALTABLE)).order_by(Node.name)
    nodes = [n for n in session.scalars(statement) if matches_selector(n, terms)]
    if not nodes:
        raise InvalidInputError(
            f"no enrolled node matches {selector or 'the fleet'}",
            hint="list nodes with: knightwatch status",
        )
    return nodes


def _active_rows(
    session: Session, names: set[str] | None, *, halt_id: int | None = None
) -> Iterable[tuple[HaltNode, Halt]]:
    """(row, halt) of halts not lifted whose node is not re-armed yet."""
    statement = (
        select(HaltNode, Halt)
        .join(Halt, Halt.id == HaltNode.halt_id)
        .where(Halt.lifted_at.is_(None), HaltNode.rearmed_at.is_(None))
        .order_by(Halt.id)
    )
    if names is not None:
        statement = statement.where(HaltNode.node_name.in_(sorted(names)))
    if halt_id is not None:
        statement = statement.where(HaltNode.halt_id == halt_id)
    return [(row, halt) for row, halt in session.execute(statement)]


def _last_halt_id(session: Session, node: str) -> int | None:
    statement = (
        select(HaltNode.halt_id)
        .where(HaltNode.node_name == node)
        .order_by(HaltNode.halt_id.desc())
        .limit(1)
    )
    return session.scalars(statement).first()


def _detail_rearm_reason(session: Session, node: str, halt_id: int) -> str:
    row = session.get(HaltNode, (halt_id, node))
    rearm = _detail(row).get("rearm", {}) if row is not None else {}
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
    if source == "dead-man":
        alerts.fire(
            session,
            rule=DEAD_MAN_RULE,
            node=node.name,
            severity="critical",
            summary=f"{node.name} halted its service by its dead man's switch",
            detail=reason,
            now=now,
        )


def _connected(session: Session, names: list[str]) -> dict[str, bool]:
    if not names:
        return {}
    rows = session.execute(select(Node.name, Node.connected).where(Node.name.in_(names)))
    return {name: bool(connected) for name, connected in rows}


def _node_halt(halt: Halt, row: HaltNode, connected: bool) -> NodeHalt:
    detail = _detail(row)
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


def _detail(row: HaltNode) -> dict[str, Any]:
    """The row's detail: JSON (pids, the agent's detail, the re-arm), or plain text."""
    if not row.detail:
        return {}
    try:
        data = json.loads(row.detail)
    except ValueError:
        return {"detail": row.detail}
    return data if isinstance(data, dict) else {"detail": row.detail}


def _with(row: HaltNode, **changes: Any) -> str:
    return json.dumps({**_detail(row), **changes}, sort_keys=True)
