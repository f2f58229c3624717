"""Operator API for the configuration audit: audits, reconciles, retirements."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from knightwatch.api.auth import Operator
from knightwatch.api.changes import answer
from knightwatch.api.fields import IdPath, NamePath, NodeSelector, SafeText
from knightwatch.api.plane import Plane
from knightwatch.control.audits import audit_report, start_audit
from knightwatch.control.changes import ChangeKind
from knightwatch.control.retirement import retirement_report
from knightwatch.server.changes import retire_target, submit

__all__ = ["router"]

router = APIRouter(prefix="/api/v1")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuditBody(_Body):
    """Which nodes to audit (a selector; all enrolled nodes when absent)."""

    nodes: Annotated[NodeSelector, Field(min_length=1, max_length=4096)] | None = None


class ReconcileBody(_Body):
    """Why a node is reconciled (recorded with the deployment)."""

    reason: Annotated[str, Field(max_length=1000), SafeText] = ""
    emergency: bool = False


class RetireBody(_Body):
    """Why a release is retired (recorded in its history)."""

    reason: Annotated[str, Field(min_length=1, max_length=1000), SafeText]


@router.post("/audits", status_code=201)
def create_audit(body: AuditBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Start a fleet-wide audit: every selected, connected node audits itself now."""
    with plane.db.session() as session:
        plan = start_audit(session, body.nodes, who, plane.clock.now())
    for node in plan.online:
        plane.hub.send(node, plan.request)
    return {"audit_id": plan.audit_id, "online": plan.online, "offline": plan.offline}


@router.get("/audits/{audit_id}")
def show_audit(audit_id: IdPath, plane: Plane, _who: Operator) -> dict[str, Any]:
    """An audit's per-node verdicts as of now."""
    with plane.db.session() as session:
        return audit_report(session, audit_id).to_json()


@router.post("/nodes/{name}/reconcile", status_code=201)
def reconcile(
    name: NamePath, body: ReconcileBody, response: Response, plane: Plane, who: Operator
) -> dict[str, Any]:
    """Propose re-staging the exact bytes of the node's release and restarting it."""
    target = {"node": name, "reason": body.reason}
    reason = body.reason or f"reconcile {name}"
    submitted = submit(plane, ChangeKind.RECONCILE, target, reason, who, emergency=body.emergency)
    return answer(submitted, response, submitted.result or {})


@router.post("/releases/{ref}/retire", status_code=201)
def retire(
    ref: NamePath, body: RetireBody, response: Response, plane: Plane, who: Operator
) -> dict[str, Any]:
    """Propose retiring a release: every node deletes it and verifies its absence."""
    target = retire_target(plane, ref, body.reason)
    submitted = submit(plane, ChangeKind.RETIRE, target, body.reason, who)
    return answer(submitted, response, submitted.result or {})


@router.get("/retirements/{retirement_id}")
def show_retirement(retirement_id: IdPath, plane: Plane, _who: Operator) -> dict[str, Any]:
    """A retirement and every node's verified absence."""
    with plane.db.session() as session:
        return retirement_report(session, retirement_id)
