"""Operator API for change requests: propose, list, show, approve, reject, tick, execute,
cancel; and the post-incident reviews emergencies open."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from knightwatch.api.auth import Operator
from knightwatch.api.fields import FlagValue as Value
from knightwatch.api.fields import IdPath, NodeSelector, SafeLine, SafeText
from knightwatch.api.plane import Plane
from knightwatch.control.changes import (
    ChangeKind,
    ChangeState,
    approve,
    cancel,
    change_json,
    close_review,
    get_change,
    list_changes,
    list_reviews,
    reject,
    review_json,
    tick,
)
from knightwatch.errors import InvalidInputError
from knightwatch.server.changes import (
    Submitted,
    deploy_target,
    execute,
    retire_target,
    submit,
)
from knightwatch.server.plane import ControlPlane
from knightwatch.vocabulary import DeploymentStrategy, Role

__all__ = ["answer", "router"]

router = APIRouter(prefix="/api/v1")
Reason = Annotated[str, Field(min_length=1, max_length=1000), SafeText]
Note = Annotated[str, Field(max_length=1000), SafeText]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProposeBody(_Body):
    """A change of any kind: the kind, its arguments, why, and whether it is an emergency."""

    kind: ChangeKind
    reason: Reason
    emergency: bool = False
    release: Annotated[str, Field(min_length=1, max_length=200), SafeLine] | None = None
    nodes: Annotated[NodeSelector, Field(min_length=1, max_length=4096)] | None = None
    strategy: DeploymentStrategy = DeploymentStrategy.ATOMIC
    soak_s: Annotated[float, Field(ge=0, le=86400)] | None = None
    node: Annotated[str, Field(min_length=1, max_length=63), SafeLine] | None = None
    flag: Annotated[str, Field(min_length=1, max_length=127), SafeLine] | None = None
    scope: Annotated[str, Field(min_length=1, max_length=80)] = "fleet"
    value: Value | None = None


class NoteBody(_Body):
    """Why (a rejection, a cancellation, a closed review)."""

    note: Note = ""


class TickBody(_Body):
    """One checklist item, exactly as the checklist words it."""

    item: Annotated[str, Field(min_length=1, max_length=255), SafeLine]


def answer(submitted: Submitted, response: Response, result: dict[str, Any]) -> dict[str, Any]:
    """The answer to a proposal: 202 and the request while it waits, else what it started."""
    if submitted.pending:
        response.status_code = 202
        return {"pending": True, "change": submitted.change}
    return {**result, "change": _brief(submitted.change)}


@router.post("/changes", status_code=201)
def propose_change(
    body: ProposeBody, response: Response, plane: Plane, who: Operator
) -> dict[str, Any]:
    """Propose a change; it runs at once only when the policy needs nobody else's approval."""
    target = target_of(plane, body)
    submitted = submit(plane, body.kind, target, body.reason, who, emergency=body.emergency)
    return answer(submitted, response, submitted.result or {})


@router.get("/changes")
def changes(
    plane: Plane,
    _who: Operator,
    state: ChangeState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    """Recent change requests, newest first."""
    with plane.db.reading() as session:
        return list_changes(session, state=state.value if state else None, limit=limit)


@router.get("/changes/{change_id}")
def show(change_id: IdPath, plane: Plane, _who: Operator) -> dict[str, Any]:
    """One change request: target, frozen assessment, approvals, checklist, result."""
    return _show(plane, change_id)


@router.post("/changes/{change_id}/approve")
def approve_change(change_id: IdPath, plane: Plane, who: Operator) -> dict[str, Any]:
    """Approve someone else's change, for exactly its target and assessment."""
    with plane.db.session() as session:
        approve(session, change_id, who, now=plane.clock.now())
    return _show(plane, change_id)


@router.post("/changes/{change_id}/reject")
def reject_change(change_id: IdPath, body: NoteBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Reject someone else's change."""
    with plane.db.session() as session:
        reject(session, change_id, who, body.note, now=plane.clock.now())
    return _show(plane, change_id)


@router.post("/changes/{change_id}/cancel")
def cancel_change(
    change_id: IdPath, body: NoteBody, request: Request, plane: Plane, who: Operator
) -> dict[str, Any]:
    """Withdraw a change (its author, or an admin)."""
    admin = request.state.user.role is Role.ADMIN
    with plane.db.session() as session:
        cancel(session, change_id, who, body.note, admin=admin, now=plane.clock.now())
    return _show(plane, change_id)


@router.post("/changes/{change_id}/tick")
def tick_item(change_id: IdPath, body: TickBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Tick one item of the change's checklist, by name."""
    with plane.db.session() as session:
        tick(session, change_id, body.item, who, now=plane.clock.now())
    return _show(plane, change_id)


@router.post("/changes/{change_id}/execute")
def execute_change(change_id: IdPath, plane: Plane, who: Operator) -> dict[str, Any]:
    """Run an approved change, re-assessed first (a changed fleet voids its approvals)."""
    result = execute(plane, change_id, who)
    return {**result, "change": _brief(_show(plane, change_id))}


@router.get("/reviews")
def reviews(plane: Plane, _who: Operator, open_only: bool = True) -> list[dict[str, Any]]:
    """Post-incident review items (open ones by default)."""
    with plane.db.reading() as session:
        return list_reviews(session, open_only=open_only)


@router.post("/reviews/{review_id}/close")
def close(review_id: IdPath, body: NoteBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Close a review item: never by whoever acted in the emergency."""
    if not body.note:
        raise InvalidInputError("closing a review needs a note: what was found")
    with plane.db.session() as session:
        return review_json(close_review(session, review_id, who, body.note, now=plane.clock.now()))


def target_of(plane: ControlPlane, body: ProposeBody) -> dict[str, Any]:
    """The target of a proposal, checked for the arguments its kind needs."""
    kind = body.kind
    if kind is ChangeKind.DEPLOY:
        release = _needed(body.release, kind, "release")
        return deploy_target(plane, release, body.nodes, body.strategy.value, body.soak_s)
    if kind is ChangeKind.ROLLBACK:
        return {}
    if kind is ChangeKind.RECONCILE:
        return {"node": _needed(body.node, kind, "node"), "reason": body.reason}
    if kind is ChangeKind.RETIRE:
        return retire_target(plane, _needed(body.release, kind, "release"), body.reason)
    if kind is ChangeKind.REARM:
        return {"nodes": body.nodes, "reason": body.reason}
    return {
        "flag": _needed(body.flag, kind, "flag"),
        "scope": body.scope,
        "value": body.value,
        "reason": body.reason,
    }


def _needed(value: str | None, kind: ChangeKind, what: str) -> str:
    if not value:
        raise InvalidInputError(f"a {kind} change needs {what}")
    return value


def _show(plane: ControlPlane, change_id: int) -> dict[str, Any]:
    with plane.db.reading() as session:
        return change_json(session, get_change(session, change_id))


def _brief(change: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "kind", "state", "risk", "author", "approvals_needed", "emergency")
    return {key: change[key] for key in keys}
