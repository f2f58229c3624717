"""The life of a change request: propose, approve, reject, cancel, tick, execute, review.

Each function changes one request inside the caller's transaction, moves it
only along a declared transition and appends to the audit log. Executing the
change itself (starting the deployment, …) is the server's part
(server/changes.py); this module decides whether it may run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.canonical import canonical_json
from knightwatch.control import auditlog
from knightwatch.control.changes.assessment import Assessment, assess
from knightwatch.control.changes.model import (
    CHECKLISTS,
    EMERGENCY_KINDS,
    TERMINAL,
    ChangeKind,
    ChangeState,
    check_change_transition,
)
from knightwatch.control.changes.reviews import open_review, review_json
from knightwatch.control.changes.rules import ApprovalPolicy, FreezeWindow, active_freeze
from knightwatch.control.users import PermissionDeniedError
from knightwatch.errors import GateRefusedError, InvalidInputError, NotFoundError
from knightwatch.store import ChangeApproval, ChangeRequest, ChangeTick, ReviewItem

__all__ = [
    "ChangeRules",
    "Readiness",
    "approve",
    "cancel",
    "change_json",
    "get_change",
    "list_changes",
    "mark_executed",
    "mark_failed",
    "propose",
    "readiness",
    "reject",
    "tick",
]


@dataclass(frozen=True)
class ChangeRules:
    """The configured rules a change is held to."""

    policy: ApprovalPolicy
    freezes: tuple[FreezeWindow, ...] = ()


@dataclass(frozen=True)
class Readiness:
    """Whether a change may execute now; if not, every reason."""

    problems: list[str]
    voided: bool
    """The assessment changed since approval: the approvals were voided."""

    @property
    def ready(self) -> bool:
        """True when nothing stands in the way."""
        return not self.problems


def propose(
    session: Session,
    kind: ChangeKind,
    target: dict[str, Any],
    reason: str,
    *,
    author: str,
    emergency: bool,
    rules: ChangeRules,
    now: datetime,
) -> ChangeRequest:
    """Record a new request with its risk assessment frozen into it."""
    if emergency and kind not in EMERGENCY_KINDS:
        raise InvalidInputError(
            f"--emergency is for rollback, reconcile and rearm, not {kind}",
            hint="an emergency moves the fleet back to a known state; anything else is reviewed",
        )
    freeze = active_freeze(rules.freezes, now)
    if freeze is not None and not emergency:
        raise GateRefusedError(
            f"change freeze {freeze.name!r} is in force "
            f"({', '.join(freeze.to_json()['days'])} {freeze.to_json()['start']}-"
            f"{freeze.to_json()['end']} {freeze.zone})",
            hint="wait for the window to end; a rollback, reconcile or rearm may use --emergency",
        )
    assessment = assess(session, kind, target, now)
    needed = _needed(assessment, rules, emergency=emergency)
    row = ChangeRequest(
        kind=kind.value,
        state=ChangeState.PROPOSED.value,
        target=canonical_json(target).decode("utf-8"),
        target_hash=_target_hash(kind, target),
        reason=reason,
        author=author,
        emergency=emergency,
        risk=assessment.risk.value,
        assessment=json.dumps(assessment.to_json(), sort_keys=True),
        assessment_hash=assessment.digest,
        approvals_needed=needed,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    _log(session, row, author, "change.proposed", now, risk=row.risk, needed=needed)
    return row


def approve(session: Session, change_id: int, approver: str, *, now: datetime) -> ChangeRequest:
    """Record ``approver``'s approval, bound to the request's exact target and assessment."""
    row = get_change(session, change_id, lock=True)
    if approver == row.author:
        raise PermissionDeniedError(
            f"{approver} proposed change {row.id} and cannot approve it",
            hint="a change needs a second person: ask another approver",
        )
    if row.state != ChangeState.PROPOSED:
        raise GateRefusedError(f"change {row.id} is {row.state}; only a PROPOSED one is approved")
    if approver in _approvers(session, row.id):
        raise GateRefusedError(f"{approver} already approved change {row.id}")
    session.add(
        ChangeApproval(
            change_id=row.id,
            approver=approver,
            at=now,
            target_hash=row.target_hash,
            assessment_hash=row.assessment_hash,
        )
    )
    session.flush()
    _log(session, row, approver, "change.approval", now, assessment=row.assessment_hash)
    if len(_approvers(session, row.id)) >= row.approvals_needed:
        _move(session, row, ChangeState.APPROVED, approver, now)
    return row


def reject(session: Session, change_id: int, by: str, note: str, *, now: datetime) -> ChangeRequest:
    """Reject a request (someone other than its author; the author cancels instead)."""
    row = get_change(session, change_id, lock=True)
    if by == row.author:
        raise PermissionDeniedError(
            f"{by} proposed change {row.id}: withdraw it with `knightwatch change cancel`"
        )
    row.note = note
    _move(session, row, ChangeState.REJECTED, by, now)
    return row


def cancel(
    session: Session, change_id: int, by: str, note: str, *, admin: bool, now: datetime
) -> ChangeRequest:
    """Withdraw a request: its author, or an admin."""
    row = get_change(session, change_id, lock=True)
    if by != row.author and not admin:
        raise PermissionDeniedError(
            f"only {row.author} (its author) or an admin may cancel change {row.id}"
        )
    row.note = note
    _move(session, row, ChangeState.CANCELLED, by, now)
    return row


def tick(session: Session, change_id: int, item: str, by: str, *, now: datetime) -> ChangeRequest:
    """Tick one item of the request's checklist, by name."""
    row = get_change(session, change_id, lock=True)
    items = CHECKLISTS[ChangeKind(row.kind)]
    if item not in items:
        raise InvalidInputError(
            f"{item!r} is not on the checklist of a {row.kind} change",
            hint="its items: " + "; ".join(items),
        )
    if ChangeState(row.state) in TERMINAL:
        raise GateRefusedError(f"change {row.id} is {row.state}; nothing to tick")
    if session.get(ChangeTick, (row.id, item)) is not None:
        raise GateRefusedError(f"{item!r} is ticked already")
    session.add(ChangeTick(change_id=row.id, item=item, by=by, at=now))
    _log(session, row, by, "change.ticked", now, item=item)
    return row


def readiness(session: Session, row: ChangeRequest, rules: ChangeRules, now: datetime) -> Readiness:
    """Whether ``row`` may execute now; voids its approvals if the fleet changed since.

    The void is written in the caller's transaction: commit it even when
    execution is refused.
    """
    if ChangeState(row.state) in TERMINAL:
        return Readiness([f"change {row.id} is {row.state}"], voided=False)
    fresh = assess(session, ChangeKind(row.kind), json.loads(row.target), now)
    voided = fresh.digest != row.assessment_hash
    if voided:
        _void(session, row, fresh, rules, now)
    problems = []
    if voided and row.approvals_needed:
        problems.append(
            "the fleet changed since this change was assessed: the assessment is redone "
            f"(risk {fresh.risk}) and its approvals are void; it needs approving again"
        )
    approvals = len(_approvers(session, row.id))
    if approvals < row.approvals_needed:
        problems.append(
            f"{approvals} of {row.approvals_needed} approval(s) from someone other than "
            f"{row.author}"
        )
    if rules.policy.checklists and not row.emergency and row.approvals_needed:
        left = [i for i in CHECKLISTS[ChangeKind(row.kind)] if i not in _ticked(session, row.id)]
        if left:
            problems.append("checklist items not ticked: " + "; ".join(left))
    freeze = active_freeze(rules.freezes, now)
    if freeze is not None and not row.emergency:
        problems.append(f"change freeze {freeze.name!r} is in force")
    return Readiness(problems, voided)


def mark_executed(
    session: Session, row: ChangeRequest, by: str, result: dict[str, Any], *, now: datetime
) -> None:
    """Record that the change ran and what it started; an emergency opens a review item."""
    row.result = json.dumps(result, sort_keys=True, default=str)
    _move(session, row, ChangeState.EXECUTED, by, now)
    if row.emergency:
        open_review(session, row, by, now=now)


def mark_failed(
    session: Session, row: ChangeRequest, by: str, error: str, *, now: datetime
) -> None:
    """Record that the change's execution was refused or failed."""
    row.note = error[:2000]
    _move(session, row, ChangeState.FAILED, by, now)


def get_change(session: Session, change_id: int, *, lock: bool = False) -> ChangeRequest:
    """One request by id (locked for update when it is about to change)."""
    row = session.get(ChangeRequest, change_id, with_for_update=lock)
    if row is None:
        raise NotFoundError(f"no change request {change_id}", hint="`knightwatch change list`")
    return row


def list_changes(session: Session, *, state: str | None, limit: int) -> list[dict[str, Any]]:
    """Recent requests, newest first (one state, or all)."""
    statement = select(ChangeRequest).order_by(ChangeRequest.id.desc()).limit(limit)
    if state is not None:
        statement = statement.where(ChangeRequest.state == state)
    return [change_json(session, row) for row in session.scalars(statement)]


def change_json(session: Session, row: ChangeRequest) -> dict[str, Any]:
    """A request as the API and ``--json`` show it."""
    approvals = session.scalars(
        select(ChangeApproval).where(ChangeApproval.change_id == row.id).order_by(ChangeApproval.id)
    )
    ticked = {
        t.item: t for t in session.scalars(select(ChangeTick).where(ChangeTick.change_id == row.id))
    }
    reviews = session.scalars(select(ReviewItem).where(ReviewItem.change_id == row.id))
    return {
        "id": row.id,
        "kind": row.kind,
        "state": row.state,
        "target": json.loads(row.target),
        "reason": row.reason,
        "author": row.author,
        "emergency": row.emergency,
        "risk": row.risk,
        "assessment": json.loads(row.assessment),
        "approvals_needed": row.approvals_needed,
        "approvals": [
            {
                "by": a.approver,
                "at": a.at.isoformat(),
                "void": a.void,
                "assessment": a.assessment_hash,
            }
            for a in approvals
        ],
        "checklist": [
            {
                "item": item,
                "ticked_by": ticked[item].by if item in ticked else None,
                "at": ticked[item].at.isoformat() if item in ticked else None,
            }
            for item in CHECKLISTS[ChangeKind(row.kind)]
        ],
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "decided_by": row.decided_by,
        "note": row.note,
        "result": json.loads(row.result) if row.result else None,
        "reviews": [review_json(r) for r in reviews],
    }


def _needed(assessment: Assessment, rules: ChangeRules, *, emergency: bool) -> int:
    """Approvals needed: none in an emergency or to put a kill flag on its safe side."""
    if emergency or assessment.facts.get("flag", {}).get("safe_side"):
        return 0
    return rules.policy.needed(assessment.risk)


def _target_hash(kind: ChangeKind, target: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({"kind": kind.value, "target": target})).hexdigest()


def _approvers(session: Session, change_id: int) -> set[str]:
    statement = select(ChangeApproval.approver).where(
        ChangeApproval.change_id == change_id, ChangeApproval.void.is_(False)
    )
    return set(session.scalars(statement))


def _ticked(session: Session, change_id: int) -> set[str]:
    return set(session.scalars(select(ChangeTick.item).where(ChangeTick.change_id == change_id)))


def _void(
    session: Session, row: ChangeRequest, fresh: Assessment, rules: ChangeRules, now: datetime
) -> None:
    for approval in session.scalars(
        select(ChangeApproval).where(
            ChangeApproval.change_id == row.id, ChangeApproval.void.is_(False)
        )
    ):
        approval.void = True
    row.assessment = json.dumps(fresh.to_json(), sort_keys=True)
    row.assessment_hash = fresh.digest
    row.risk = fresh.risk.value
    row.approvals_needed = _needed(fresh, rules, emergency=row.emergency)
    if row.state == ChangeState.APPROVED:
        _move(session, row, ChangeState.PROPOSED, "control-plane", now)
    _log(session, row, "control-plane", "change.voided", now, assessment=fresh.digest)


def _move(
    session: Session, row: ChangeRequest, target: ChangeState, by: str, now: datetime
) -> None:
    check_change_transition(ChangeState(row.state), target)
    row.state = target.value
    row.updated_at = now
    if target in TERMINAL:
        row.decided_by = by
    _log(session, row, by, f"change.{target.value.lower()}", now)


def _log(
    session: Session, row: ChangeRequest, actor: str, action: str, now: datetime, **payload: Any
) -> None:
    auditlog.append(
        session,
        actor=actor,
        action=action,
        obj=f"change:{row.id}",
        at=now,
        payload={"kind": row.kind, "state": row.state, **payload},
    )
