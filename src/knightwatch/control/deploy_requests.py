"""What an operator asks for, and how it becomes a recorded deployment.

The request passes the safety policy (every refusal, or none) before anything
is written; the deployment and one row per target are then recorded in the
caller's transaction, and the PREPARE commands returned, to be sent after the
commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from knightwatch.control import auditlog
from knightwatch.control.deploy_commands import Outbox, prepare_command
from knightwatch.control.policy import Action, deploy_proposal, enforce
from knightwatch.store import Deployment, DeploymentNode
from knightwatch.store.queries import get_fleet, record_event
from knightwatch.vocabulary import (
    DeploymentKind,
    DeploymentState,
    DeploymentStrategy,
    NodePhase,
    NodeRole,
)

__all__ = ["DeployRequest", "DeployTimeouts", "create_deployment"]

OFFLINE_REASON = "offline: brought to this release when it returns"


@dataclass(frozen=True)
class DeployTimeouts:
    """How long each phase may take before it counts as failed."""

    prepare_s: float = 300.0
    commit_s: float = 120.0
    rollback_s: float = 120.0
    canary_soak_s: float = 10.0


@dataclass(frozen=True)
class DeployRequest:
    """What an operator asked for."""

    release: str
    nodes: str | None = None
    strategy: DeploymentStrategy = DeploymentStrategy.ATOMIC
    soak_s: float | None = None
    requested_by: str = "operator"
    kind: DeploymentKind = DeploymentKind.DEPLOY


def create_deployment(
    session: Session, request: DeployRequest, timeouts: DeployTimeouts, now: datetime
) -> tuple[Deployment, Outbox]:
    """Check ``request`` against the safety policy, record it, and return its PREPAREs.

    Connected targets start PREPARING; offline ones are recorded OFFLINE and
    caught up when they return.
    """
    proposal, targets = deploy_proposal(
        session, Action(request.kind), request.release, request.nodes
    )
    enforce(session, proposal)  # every refusal of the safety policy, or none
    release = proposal.release
    assert release is not None
    deployment = Deployment(
        kind=request.kind,
        release_digest=release.digest,
        from_digest=get_fleet(session).desired_digest,
        strategy=request.strategy,
        state=DeploymentState.PREPARING,
        soak_s=request.soak_s if request.soak_s is not None else timeouts.canary_soak_s,
        requested_by=request.requested_by,
        created_at=now,
        updated_at=now,
        deadline=now + timedelta(seconds=timeouts.prepare_s),
    )
    session.add(deployment)
    session.flush()
    canary = targets.online[0].name if request.strategy == DeploymentStrategy.CANARY else None
    prepares: Outbox = []
    for node in targets.all:
        online = node in targets.online
        session.add(
            DeploymentNode(
                deployment_id=deployment.id,
                node_name=node.name,
                role=NodeRole.CANARY if node.name == canary else NodeRole.FLEET,
                previous_digest=node.active_digest,
                phase=NodePhase.PREPARING if online else NodePhase.OFFLINE,
                updated_at=now,
                reason=None if online else OFFLINE_REASON,
            )
        )
        if online:
            prepares.append((node.name, prepare_command(deployment, release)))
    detail = f"{request.kind} {release.release_id} to {len(targets.online)} node(s)"
    record_event(session, deployment.id, "created", at=now, detail=detail)
    auditlog.append(
        session,
        actor=request.requested_by,
        action=f"{request.kind}.requested",
        obj=f"deployment {deployment.id}",
        at=now,
        payload={
            "release": release.release_id,
            "digest": release.digest,
            "strategy": str(request.strategy),
            "nodes": sorted(n.name for n in targets.all),
        },
    )
    return deployment, prepares
