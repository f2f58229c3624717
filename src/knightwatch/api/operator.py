"""Operator API under /api/v1: thin routes over the domain."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from knightwatch.api.auth import Operator
from knightwatch.api.changes import answer
from knightwatch.api.fields import IdPath, NamePath, NodeSelector, SafeLine, SafeText, WaitSeconds
from knightwatch.api.plane import Plane
from knightwatch.api.responses import json_document
from knightwatch.control import views
from knightwatch.control.changes import ChangeKind
from knightwatch.control.enrollment import create_join_token
from knightwatch.control.fleet_status import fleet_status
from knightwatch.control.history import history
from knightwatch.control.nodes import drain_node, resume_node, retire_node
from knightwatch.errors import InvalidInputError
from knightwatch.protocol import BlobStreamError, BlobStreamWriter
from knightwatch.server.changes import deploy_target, deployment_json, submit
from knightwatch.server.plane import ControlPlane
from knightwatch.store import Deployment
from knightwatch.vocabulary import TERMINAL_STATES, DeploymentState, DeploymentStrategy

__all__ = ["router"]

router = APIRouter(prefix="/api/v1")
_STATE_CHECK_S = 0.1
"""How often a long poll of a deployment reads its state."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrollBody(_Body):
    """Options of a join token."""

    ttl_s: Annotated[float, Field(gt=0, le=7 * 86400)] | None = None
    group: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")] = "default"


class UploadBody(_Body):
    """The three documents of a release, base64-encoded."""

    manifest: Annotated[str, Field(max_length=400 * 1024 * 1024)]
    sbom: Annotated[str, Field(max_length=400 * 1024 * 1024)]
    envelope: Annotated[str, Field(max_length=1024 * 1024)]


class DeployBody(_Body):
    """A deployment request."""

    release: Annotated[str, Field(min_length=1, max_length=200), SafeLine]
    nodes: Annotated[NodeSelector, Field(max_length=4096)] | None = None
    strategy: DeploymentStrategy = DeploymentStrategy.ATOMIC
    soak_s: Annotated[float, Field(ge=0, le=86400)] | None = None
    reason: Annotated[str, Field(min_length=1, max_length=1000), SafeText] | None = None
    """Why (recorded with the change request; a plain description when absent)."""


class RollbackBody(_Body):
    """Why the fleet goes back, and whether one person may do it alone."""

    reason: Annotated[str, Field(min_length=1, max_length=1000), SafeText] | None = None
    emergency: bool = False


@router.get("/status")
def status(plane: Plane, _who: Operator) -> Response:
    """The fleet's state and every node's last report (a pure read: one snapshot, no writes)."""
    with plane.db.reading() as session:
        return json_document(fleet_status(session, plane.clock.now()).to_json())


@router.post("/nodes/{name}/enroll", status_code=201)
def enroll_node(name: NamePath, body: EnrollBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Create a one-time join token for node ``name``."""
    ttl = body.ttl_s or plane.settings.join_token_ttl_s
    with plane.db.session() as session:
        grant = create_join_token(
            session, name, now=plane.clock.now(), ttl_s=ttl, group=body.group, actor=who
        )
    return {"node": grant.node, "token": grant.token, "expires_at": grant.expires_at.isoformat()}


@router.get("/releases")
def list_releases(plane: Plane, _who: Operator) -> list[dict[str, Any]]:
    """Every release pushed to the control plane, newest first."""
    with plane.db.reading() as session:
        return views.list_releases(session)


@router.get("/releases/{ref}")
def show_release(ref: NamePath, plane: Plane, _who: Operator) -> dict[str, Any]:
    """One release, with its manifest (named as ``deploy`` accepts it)."""
    with plane.db.reading() as session:
        return views.release_view(session, ref)


@router.post("/uploads", status_code=201)
def begin_upload(body: UploadBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Start pushing a release: documents are verified now; the answer lists missing blobs."""
    ticket = plane.catalog.begin_upload(
        _b64(body.manifest, "manifest"),
        _b64(body.sbom, "sbom"),
        _b64(body.envelope, "envelope"),
        who,
    )
    return ticket.to_json()


@router.put("/uploads/{upload_id}/blobs/{digest}", status_code=204)
async def put_blob(
    upload_id: str, digest: str, request: Request, plane: Plane, _who: Operator
) -> Response:
    """Stream one blob of an upload; it is hashed and refused if it does not match."""
    writer = plane.catalog.blob_writer(upload_id, digest)
    try:
        async for chunk in request.stream():
            writer.write(chunk)
    except BaseException:
        writer.discard()
        raise
    writer.finish()
    return Response(status_code=204)


@router.put("/uploads/{upload_id}/blobs", status_code=204)
async def put_blobs(upload_id: str, request: Request, plane: Plane, _who: Operator) -> Response:
    """Stream many blobs of an upload in one body (protocol.blobstream framing)."""
    stream = BlobStreamWriter(lambda start: plane.catalog.blob_writer(upload_id, start.digest))
    try:
        async for chunk in request.stream():
            stream.feed(chunk)
        stream.close()
    except BlobStreamError as exc:
        raise InvalidInputError(f"upload stream refused: {exc}") from None
    finally:
        stream.abandon()
    return Response(status_code=204)


@router.post("/uploads/{upload_id}/commit")
def commit_upload(upload_id: str, plane: Plane, _who: Operator) -> dict[str, str]:
    """Publish an upload: the release becomes visible."""
    return {"release_id": plane.catalog.commit_upload(upload_id)}


@router.delete("/uploads/{upload_id}", status_code=204)
def abort_upload(upload_id: str, plane: Plane, _who: Operator) -> Response:
    """Drop an unfinished upload."""
    plane.catalog.abort_upload(upload_id)
    return Response(status_code=204)


@router.post("/deployments", status_code=201)
def deploy(body: DeployBody, response: Response, plane: Plane, who: Operator) -> dict[str, Any]:
    """Propose a deployment; once approved, PREPARE is sent to every connected target."""
    target = deploy_target(plane, body.release, body.nodes, body.strategy.value, body.soak_s)
    reason = body.reason or f"deploy {target['release']}"
    submitted = submit(plane, ChangeKind.DEPLOY, target, reason, who)
    return answer(submitted, response, submitted.result or {})


@router.post("/rollback", status_code=201)
def rollback(
    response: Response, plane: Plane, who: Operator, body: RollbackBody | None = None
) -> dict[str, Any]:
    """Propose returning the whole fleet to its previous release, through the same protocol."""
    body = body or RollbackBody()
    reason = body.reason or "roll the fleet back to its previous release"
    submitted = submit(plane, ChangeKind.ROLLBACK, {}, reason, who, emergency=body.emergency)
    return answer(submitted, response, submitted.result or {})


@router.get("/deployments")
def list_deployments(plane: Plane, _who: Operator, limit: int = 50) -> list[dict[str, Any]]:
    """Recent deployments, newest first."""
    with plane.db.reading() as session:
        return views.list_deployments(session, limit)


@router.get("/deployments/{deployment_id}")
def show_deployment(
    deployment_id: IdPath,
    plane: Plane,
    _who: Operator,
    wait_s: WaitSeconds = 0.0,
    state: DeploymentState | None = None,
) -> Response:
    """One deployment: its state, every node's phase, and its recorded transitions.

    With ``wait_s``, answer as soon as its state is no longer ``state`` (without
    ``state``: as soon as it ended), or after ``wait_s`` seconds. The wait reads
    one column, not the whole view: a client following a deployment of
    thousands of nodes must not cost the server a full view every 0.1 s.
    """
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and _unchanged(plane, deployment_id, state):
        time.sleep(min(_STATE_CHECK_S, max(0.0, deadline - time.monotonic())))
    return json_document(deployment_json(plane, deployment_id))


def _unchanged(plane: ControlPlane, deployment_id: int, state: DeploymentState | None) -> bool:
    """The deployment exists and is still as the caller last saw it."""
    with plane.db.reading() as session:
        now = session.scalar(select(Deployment.state).where(Deployment.id == deployment_id))
    if now is None:
        return False
    return now == state if state is not None else now not in TERMINAL_STATES


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise InvalidInputError(f"{what} is not valid base64") from None


# -- node lifecycle and status accounting -------------------------------------------------


class NodeChangeBody(_Body):
    """Why a node is drained, resumed or retired (the caller is who does it)."""

    reason: Annotated[str, Field(min_length=1, max_length=1000), SafeText]


@router.post("/nodes/{name}/drain")
def drain(name: NamePath, body: NodeChangeBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Stop giving node ``name`` deployments; its agent keeps reporting."""
    with plane.db.session() as session:
        change = drain_node(session, name, at=plane.clock.now(), actor=who, reason=body.reason)
    return change.to_json()


@router.post("/nodes/{name}/resume")
def resume(name: NamePath, body: NodeChangeBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Give drained node ``name`` deployments again."""
    with plane.db.session() as session:
        change = resume_node(session, name, at=plane.clock.now(), actor=who, reason=body.reason)
    return change.to_json()


@router.post("/nodes/{name}/retire")
async def retire(
    name: NamePath, body: NodeChangeBody, plane: Plane, who: Operator
) -> dict[str, Any]:
    """Retire node ``name`` for good: revoke its credential and close its connection."""
    with plane.db.session() as session:
        change = retire_node(session, name, at=plane.clock.now(), actor=who, reason=body.reason)
    plane.credentials.forget(name)
    await plane.hub.disconnect(name, reason="node retired")
    return change.to_json()


@router.get("/history")
def show_history(
    item: Annotated[str, Query(min_length=1, max_length=300), SafeLine],
    plane: Plane,
    _who: Operator,
) -> dict[str, Any]:
    """The recorded lifecycle of one configuration item (release, component, flag, node)."""
    with plane.db.session() as session:
        return history(session, item).to_json()
