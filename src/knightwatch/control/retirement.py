"""Retiring a release: every node deletes its tree and verifies its absence (P3).

Refused while the release is active or a rollback target anywhere — on the
fleet, on any node, or in a running deployment. Otherwise each node is sent
``retire`` (now, or when it next connects) and the retirement finishes only
when every node has reported the release verifiably absent; from then on
the release never deploys again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.control import accounting
from knightwatch.control.policy import Action, Proposal, enforce
from knightwatch.control.targets import resolve_release
from knightwatch.errors import NotFoundError
from knightwatch.protocol.audit import Retire, RetireResult
from knightwatch.store import Node, Release, Retirement, RetirementNode
from knightwatch.vocabulary import ItemKind, NodeStatus, RetirementState

__all__ = [
    "RetirementPlan",
    "pending_retires",
    "record_retire_result",
    "retirement_report",
    "start_retirement",
]


@dataclass(frozen=True)
class RetirementPlan:
    """A retirement just recorded (or resumed): the command, and who gets it now."""

    retirement_id: int
    release_id: str
    command: Retire
    online: list[str]
    offline: list[str]


def start_retirement(
    session: Session, ref: str, reason: str, requested_by: str, now: datetime
) -> RetirementPlan:
    """Record the retirement of the release ``ref`` names; refuse one still in use."""
    release = resolve_release(session, ref)
    enforce(session, Proposal(Action.RETIRE, release))  # not retired already, not in use
    retirement = session.scalars(
        select(Retirement).where(
            Retirement.release_digest == release.digest, Retirement.finished_at.is_(None)
        )
    ).first()
    if retirement is None:
        retirement = Retirement(
            release_digest=release.digest,
            requested_by=requested_by,
            requested_at=now,
            reason=reason,
        )
        session.add(retirement)
        session.flush()
        for node in _holders(session):
            session.add(
                RetirementNode(
                    retirement_id=retirement.id,
                    node_name=node.name,
                    state=RetirementState.PENDING,
                    updated_at=now,
                )
            )
        accounting.record(
            session,
            ItemKind.RELEASE,
            release.release_id,
            "retiring",
            at=now,
            actor=requested_by,
            reason=reason,
        )
        session.flush()
    rows = _rows(session, retirement.id)
    waiting = [r.node_name for r in rows if r.state != RetirementState.ABSENT]
    connected = {n.name for n in session.scalars(select(Node).where(Node.connected.is_(True)))}
    command = Retire(retirement_id=retirement.id, digest=release.digest)
    plan = RetirementPlan(
        retirement_id=retirement.id,
        release_id=release.release_id,
        command=command,
        online=[n for n in waiting if n in connected],
        offline=[n for n in waiting if n not in connected],
    )
    if not rows:
        _finish(session, retirement, release, now)
    return plan


def _holders(session: Session) -> list[Node]:
    """Every node that may hold a copy: enrolled or drained."""
    return list(
        session.scalars(
            select(Node)
            .where(Node.status.in_((NodeStatus.ENROLLED, NodeStatus.DRAINED)))
            .order_by(Node.name)
        )
    )


def _rows(session: Session, retirement_id: int) -> list[RetirementNode]:
    return list(
        session.scalars(
            select(RetirementNode)
            .where(RetirementNode.retirement_id == retirement_id)
            .order_by(RetirementNode.node_name)
        )
    )


def pending_retires(session: Session, node: str) -> list[Retire]:
    """Retire commands a (re)connecting node still owes an answer to."""
    rows = session.scalars(
        select(RetirementNode)
        .join(Retirement, Retirement.id == RetirementNode.retirement_id)
        .where(
            RetirementNode.node_name == node,
            RetirementNode.state != RetirementState.ABSENT,
            Retirement.finished_at.is_(None),
        )
    )
    commands = []
    for row in rows:
        retirement = session.get(Retirement, row.retirement_id)
        assert retirement is not None
        commands.append(Retire(retirement_id=retirement.id, digest=retirement.release_digest))
    return commands


def record_retire_result(session: Session, node: str, result: RetireResult, now: datetime) -> bool:
    """Record a node's answer; finish the retirement when every node verified absence.

    Returns True when this answer finished the retirement.
    """
    row = session.get(RetirementNode, (result.retirement_id, node))
    retirement = session.get(Retirement, result.retirement_id)
    if row is None or retirement is None or retirement.release_digest != result.digest:
        return False
    row.state = RetirementState.ABSENT if result.absent else RetirementState.FAILED
    row.detail, row.updated_at = result.detail, now
    if retirement.finished_at is not None:
        return False
    if all(r.state == RetirementState.ABSENT for r in _rows(session, retirement.id)):
        release = session.get(Release, retirement.release_digest)
        assert release is not None
        _finish(session, retirement, release, now)
        return True
    return False


def _finish(session: Session, retirement: Retirement, release: Release, now: datetime) -> None:
    retirement.finished_at = now
    release.retired_at = now
    accounting.release_retired(
        session, release, at=now, actor=retirement.requested_by, reason=retirement.reason
    )


def retirement_report(session: Session, retirement_id: int) -> dict[str, Any]:
    """A retirement and every node's verified (or not yet verified) absence."""
    retirement = session.get(Retirement, retirement_id)
    if retirement is None:
        raise NotFoundError(f"no retirement {retirement_id}")
    release = session.get(Release, retirement.release_digest)
    assert release is not None
    nodes = []
    for row in _rows(session, retirement_id):
        node = session.get(Node, row.node_name)
        nodes.append(
            {
                "node": row.node_name,
                "state": row.state,
                "detail": row.detail,
                "connected": bool(node and node.connected),
                "updated_at": row.updated_at,
            }
        )
    return asdict(
        _Report(
            retirement_id=retirement.id,
            release=release.release_id,
            digest=release.digest,
            reason=retirement.reason,
            requested_by=retirement.requested_by,
            requested_at=retirement.requested_at,
            finished_at=retirement.finished_at,
            complete=retirement.finished_at is not None,
            nodes=nodes,
        )
    )


@dataclass(frozen=True)
class _Report:
    retirement_id: int
    release: str
    digest: str
    reason: str
    requested_by: str
    requested_at: datetime
    finished_at: datetime | None
    complete: bool
    nodes: list[dict[str, Any]]
