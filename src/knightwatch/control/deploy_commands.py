"""The commands a deployment sends its nodes, and what a returning node must still learn.

Built from the recorded deployment and release only, so a command re-sent
after a restart or a reconnection is the command first sent.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.control.decisions import SWITCHED, UNSWITCHED
from knightwatch.protocol import Abort, Commit, DeployCommand, Prepare, Rollback
from knightwatch.store import Deployment, DeploymentEvent, DeploymentNode, Node, Release
from knightwatch.vocabulary import (
    TERMINAL_STATES,
    DeploymentKind,
    DeploymentState,
    NodePhase,
    ServiceState,
)

__all__ = [
    "Outbox",
    "abort_command",
    "commit_command",
    "kept_command",
    "outcomes_for",
    "prepare_command",
    "release_of",
    "resend",
    "rollback_command",
]

S, P = DeploymentState, NodePhase
Outbox = list[tuple[str, DeployCommand]]
"""Commands to send after the transaction commits: (node, command)."""


def release_of(session: Session, deployment: Deployment) -> Release:
    """The release a deployment brings."""
    release = session.get(Release, deployment.release_digest)
    assert release is not None  # foreign key
    return release


def prepare_command(deployment: Deployment, release: Release) -> Prepare:
    """Stage and verify the release (a reconcile re-stages the exact bytes)."""
    return Prepare(**_release_step(deployment, release))


def commit_command(deployment: Deployment, release: Release) -> Commit:
    """Switch to the staged release and start it."""
    return Commit(**_release_step(deployment, release))


def _release_step(deployment: Deployment, release: Release) -> dict[str, Any]:
    """What PREPARE and COMMIT of one deployment both carry."""
    return {
        "deployment_id": deployment.id,
        "digest": release.digest,
        "release_id": release.release_id,
        "restage": deployment.kind == DeploymentKind.RECONCILE,
    }


def kept_command(deployment: Deployment, release: Release) -> Commit:
    """A deployment's outcome for a node it switched: run this release (no switch, no restage)."""
    return Commit(deployment_id=deployment.id, digest=release.digest, release_id=release.release_id)


def abort_command(deployment: Deployment) -> Abort:
    """Drop what was staged for a deployment that will not switch this node."""
    return Abort(deployment_id=deployment.id, digest=deployment.release_digest)


def rollback_command(session: Session, deployment: Deployment, row: DeploymentNode) -> Rollback:
    """Return a node to the release it ran before the deployment."""
    previous = session.get(Release, row.previous_digest) if row.previous_digest else None
    return Rollback(
        deployment_id=deployment.id,
        digest=row.previous_digest,
        release_id=previous.release_id if previous else None,
    )


def resend(session: Session, deployment: Deployment, row: DeploymentNode) -> Outbox:
    """What a node of a running deployment is owed now, given its recorded phase."""
    phase = P(row.phase)
    if phase == P.ROLLING_BACK:
        return [(row.node_name, rollback_command(session, deployment, row))]
    if phase in UNSWITCHED and deployment.state in TERMINAL_STATES | {S.ROLLING_BACK}:
        return [(row.node_name, abort_command(deployment))]
    if phase == P.PREPARING:
        return [(row.node_name, prepare_command(deployment, release_of(session, deployment)))]
    if phase == P.COMMITTING:
        return [(row.node_name, commit_command(deployment, release_of(session, deployment)))]
    return []


def outcomes_for(session: Session, node: str) -> Outbox:
    """What ``node`` must still learn about deployments that ended, oldest first.

    Abort for every ended deployment whose release it staged in vain and has
    not acknowledged aborting; for the last deployment that may have switched
    it, Rollback if its rollback was never acknowledged, or Commit of the kept
    release when its service is not running.
    """
    found = _aborts_owed(session, node)
    last = session.scalars(
        select(DeploymentNode)
        .where(DeploymentNode.node_name == node, DeploymentNode.phase.in_(list(SWITCHED)))
        .order_by(DeploymentNode.deployment_id.desc())
        .limit(1)
    ).first()
    ended = session.get(Deployment, last.deployment_id) if last is not None else None
    if last is None or ended is None or ended.state not in TERMINAL_STATES:
        return found
    if ended.state != S.SUCCEEDED:
        if last.phase != P.ROLLED_BACK:  # it never confirmed the rollback
            found.append((node, rollback_command(session, ended, last)))
        return found
    reported = session.get(Node, node)
    if (
        reported is not None
        and reported.active_digest == ended.release_digest
        and reported.service_state in (ServiceState.NONE, ServiceState.STOPPED)
    ):
        found.append((node, kept_command(ended, release_of(session, ended))))
    return found


def _aborts_owed(session: Session, node: str) -> Outbox:
    unsettled = session.execute(
        select(DeploymentNode, Deployment)
        .join(Deployment, Deployment.id == DeploymentNode.deployment_id)
        .where(
            DeploymentNode.node_name == node,
            DeploymentNode.phase.in_([*UNSWITCHED, P.PREPARE_FAILED]),
            Deployment.state.in_([S.FAILED, S.ROLLED_BACK, S.ROLLBACK_FAILED]),
        )
        .order_by(Deployment.id)
    ).all()
    aborted = set(
        session.scalars(
            select(DeploymentEvent.deployment_id).where(
                DeploymentEvent.node_name == node,
                DeploymentEvent.event == f"node:{P.ABORTED}",
            )
        )
    )
    return [
        (node, abort_command(deployment))
        for row, deployment in unsettled
        if row.phase != P.PREPARE_FAILED or deployment.id not in aborted
    ]
