"""Operator API for the configuration audit: audits, reconciles, retirements."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from knightwatch.api.auth import Operator
from knightwatch.api.fields import IdPath, NamePath, NodeSelector, SafeText
from knightwatch.api.operator import deployment_json
from knightwatch.api.plane import Plane
from knightwatch.control.audits import audit_report, start_audit
from knightwatch.control.retirement import retirement_report, start_retirement

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
def reconcile(name: NamePath, body: ReconcileBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Re-stage the exact bytes of the node's release and restart it, as a deployment."""
    by = f"{who} (reconcile{': ' + body.reason if body.reason else ''})"
    deployment_id = plane.orchestrator.start_reconcile(name, requested_by=by[:255])
    return deployment_json(plane, deployment_id)


@router.post("/releases/{ref}/retire", status_code=201)
def retire(ref: NamePath, body: RetireBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Retire a release: every node deletes it and verifies its absence."""
    with plane.db.session() as session:
        plan = start_retirement(session, ref, body.reason, who, plane.clock.now())
    for node in plan.online:
        plane.hub.send(node, plan.command)
    with plane.db.session() as session:
        return retirement_report(session, plan.retirement_id)


@router.get("/retirements/{retirement_id}")
def show_retirement(retirement_id: IdPath, plane: Plane, _who: Operator) -> dict[str, Any]:
    """A retirement and every node's verified absence."""
    with plane.db.session() as session:
        return retirement_report(session, retirement_id)
