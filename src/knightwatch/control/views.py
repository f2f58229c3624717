"""Read models of releases and deployments: what the API and the CLI show of them.

Each function takes an open session and returns JSON-ready data, so routes stay
thin and a view is the same wherever it is shown.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.bundle.manifest import Manifest
from knightwatch.control.targets import resolve_release
from knightwatch.errors import NotFoundError
from knightwatch.store import Deployment, DeploymentEvent, DeploymentNode, Release

__all__ = ["deployment_view", "list_deployments", "list_releases", "release_view"]

MAX_LISTED = 1000


def list_releases(session: Session) -> list[dict[str, Any]]:
    """Every release pushed to the control plane, newest first."""
    rows = session.scalars(select(Release).order_by(Release.pushed_at.desc()))
    return [_release_summary(r) for r in rows]


def release_view(session: Session, ref: str) -> dict[str, Any]:
    """One release, named as ``deploy`` accepts it (ID, name@version, digest or prefix)."""
    release = resolve_release(session, ref)
    manifest = Manifest.from_bytes(release.manifest, where=release.release_id)
    return {**_release_summary(release), "manifest": manifest.to_json()}


def list_deployments(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """The ``limit`` most recent deployments (1 to 1000), newest first."""
    rows = session.scalars(
        select(Deployment).order_by(Deployment.id.desc()).limit(max(1, min(limit, MAX_LISTED)))
    )
    return [_deployment_summary(session, d) for d in rows]


def deployment_view(session: Session, deployment_id: int) -> dict[str, Any]:
    """One deployment: its state, every node's phase and its recorded transitions."""
    deployment = session.get(Deployment, deployment_id)
    if deployment is None:
        raise NotFoundError(
            f"no deployment {deployment_id}",
            hint="list deployments with: knightwatch deployments",
        )
    nodes = session.scalars(
        select(DeploymentNode)
        .where(DeploymentNode.deployment_id == deployment_id)
        .order_by(DeploymentNode.node_name)
    )
    events = session.scalars(
        select(DeploymentEvent)
        .where(DeploymentEvent.deployment_id == deployment_id)
        .order_by(DeploymentEvent.id)
    )
    return {
        **_deployment_summary(session, deployment),
        "nodes": [_node_phase(n) for n in nodes],
        "events": [
            {"at": e.at.isoformat(), "node": e.node_name, "event": e.event, "detail": e.detail}
            for e in events
        ],
    }


def _node_phase(row: DeploymentNode) -> dict[str, Any]:
    return {
        "node": row.node_name,
        "role": row.role,
        "phase": row.phase,
        "reason": row.reason,
        "previous_digest": row.previous_digest,
        "pid": row.pid,
        "started_at": row.started_at,
        "version": row.version,
        "updated_at": row.updated_at.isoformat(),
    }


def _deployment_summary(session: Session, deployment: Deployment) -> dict[str, Any]:
    release = session.get(Release, deployment.release_digest)
    return {
        "id": deployment.id,
        "kind": deployment.kind,
        "state": deployment.state,
        "release_id": release.release_id if release else deployment.release_digest,
        "release_digest": deployment.release_digest,
        "from_digest": deployment.from_digest,
        "strategy": deployment.strategy,
        "reason": deployment.reason,
        "requested_by": deployment.requested_by,
        "created_at": deployment.created_at.isoformat(),
        "finished_at": deployment.finished_at.isoformat() if deployment.finished_at else None,
    }


def _release_summary(release: Release) -> dict[str, Any]:
    return {
        "release_id": release.release_id,
        "digest": release.digest,
        "name": release.name,
        "version": release.version,
        "signed_by": release.signed_by,
        "pushed_at": release.pushed_at.isoformat(),
        "pushed_by": release.pushed_by,
    }
