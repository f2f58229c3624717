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

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Row, insert, select, update
from sqlalchemy.orm import Session

from knightwatch.control import auditlog
from knightwatch.control.fleet_conditions import lock_fleet
from knightwatch.control.halt_rows import active_halt_rows, detail_with, last_halt_id
from knightwatch.control.policy import Action, Proposal, enforce
from knightwatch.errors import InvalidInputError
from knightwatch.protocol import Halt as HaltMessage
from knightwatch.protocol import Rearm
from knightwatch.selection import Named, matches_selector, parse_selector
from knightwatch.store import Halt, HaltNode, Node
from knightwatch.vocabulary import HaltSource, NodeStatus

__all__ = [
    "DEAD_MAN_RULE",
    "MAX_REASON",
    "HaltPlan",
    "RearmPlan",
    "dead_man_seconds",
    "issue_halt",
    "lift_halts",
]

DEAD_MAN_RULE = "dead-man"
MAX_REASON = 1000
_N = TypeVar("_N", bound=Named)

_HALTABLE = (
    NodeStatus.ENROLLED,
    NodeStatus.DRAINED,
)  # a drained node takes no deployments, but it still halts


_CHUNK = 900
"""Names per ``IN (…)``: under every database's limit on bound parameters."""


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


def issue_halt(
    session: Session,
    selector: str | None,
    reason: str,
    requested_by: str,
    now: datetime,
    *,
    source: HaltSource = HaltSource.KILL,
) -> HaltPlan:
    """Record a latched halt of every selected node; return the message to send to them all.

    ``source`` is what caused it (``kill``: an operator; ``guard``: a guard's
    ``halt_fleet``), recorded on every node it halts and carried to the agents.
    """
    reason = _reason(reason)
    lock_fleet(session, now)  # the fleet row before any node row: the order every writer keeps
    nodes = _selected_facts(session, selector)
    halt = Halt(selector=selector or None, reason=reason, requested_by=requested_by, issued_at=now)
    session.add(halt)
    session.flush()
    if nodes:  # one INSERT for every node's row, one UPDATE for the nodes not yet halted
        session.execute(
            insert(HaltNode),
            [{"halt_id": halt.id, "node_name": n.name, "detail": ""} for n in nodes],
        )
    running = [n.name for n in nodes if not n.halted]
    for start in range(0, len(running), _CHUNK):
        session.execute(
            update(Node)
            .where(Node.name.in_(running[start : start + _CHUNK]))
            .values(halted=True, halt_source=source, halted_since=now, halt_reason=reason)
        )
    message = HaltMessage(halt_id=halt.id, reason=reason, issued_at=now, source=source)
    online = [n.name for n in nodes if n.connected]
    auditlog.append(
        session,
        actor=requested_by,
        action="halt.issued",
        obj=f"halt {halt.id}",
        at=now,
        payload={
            "selector": selector,
            "reason": reason,
            "source": str(source),
            "nodes": sorted(n.name for n in nodes),
        },
    )
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
    for row, halt in active_halt_rows(session, names):
        row.rearmed_at = now
        row.detail = detail_with(
            row, rearm={"by": lifted_by, "reason": reason, "at": now.isoformat()}
        )
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
        if not list(active_halt_rows(session, None, halt_id=halt.id)):
            halt.lifted_at, halt.lifted_by, halt.lift_reason = now, lifted_by, reason
    messages = []
    for node in targets:
        halt_id = lifted_for.get(node.name) or last_halt_id(session, node.name)
        if halt_id is not None:
            messages.append((node.name, Rearm(halt_id=halt_id, reason=reason)))
    online = [n.name for n in targets if n.connected]
    auditlog.append(
        session,
        actor=lifted_by,
        action="halt.lifted",
        obj=", ".join(f"halt {h}" for h in sorted(touched)) or "halt",
        at=now,
        payload={"selector": selector, "reason": reason, "nodes": sorted(lifted_for)},
    )
    return RearmPlan(
        sorted(touched), messages, online, [n.name for n in targets if not n.connected]
    )


def dead_man_seconds(group: str, armed_groups: Sequence[str], seconds: float) -> float | None:
    """The dead man's period for a node of ``group`` (None: the group is not armed)."""
    return seconds if group in armed_groups else None


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
    statement = select(Node).where(Node.status.in_(_HALTABLE)).order_by(Node.name)
    return _matching(list(session.scalars(statement)), selector)


def _selected_facts(session: Session, selector: str | None) -> list[Row[Any]]:
    """The selected nodes' name, group, latch and link as plain rows (a fleet halt reads
    10,000; loading each whole node, its last report with it, took a second)."""
    statement = (
        select(Node.name, Node.group_name, Node.halted, Node.connected)
        .where(Node.status.in_(_HALTABLE))
        .order_by(Node.name)
    )
    return _matching(list(session.execute(statement)), selector)


def _matching(nodes: list[_N], selector: str | None) -> list[_N]:
    terms = parse_selector(selector)
    chosen = [n for n in nodes if matches_selector(n, terms)]
    if not chosen:
        raise InvalidInputError(
            f"no enrolled node matches {selector or 'the fleet'}",
            hint="list nodes with: knightwatch status",
        )
    return chosen
