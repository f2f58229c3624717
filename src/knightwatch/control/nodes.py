"""Taking nodes out of service: drain, resume, retire (the node lifecycle after enrolment).

    pending ─► enrolled ◄──resume── drained
                  │ └────drain────────►│
                  └────────retire──────┴──► retired   (credential revoked, name never reused)

A drained node takes no deployments (targets are enrolled nodes only) but its
agent still connects and reports, so the fleet still knows what runs there.
A retired node's credential is revoked and its unused join tokens expire, so
its agent can no longer connect; the adapter also closes its live connection.
Each change records its lifecycle event (who, why) in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.control.accounting import node_drained, node_resumed, node_retired
from knightwatch.control.fleet import record_fleet_conditions
from knightwatch.errors import GateRefusedError, InvalidInputError, NotFoundError
from knightwatch.store import DeploymentNode, JoinToken, Node
from knightwatch.store.queries import active_deployment, get_fleet
from knightwatch.vocabulary import NodeStatus

__all__ = ["NodeChange", "drain_node", "resume_node", "retire_node"]


class _Recorder(Protocol):
    def __call__(
        self, session: Session, node: Node, *, at: datetime, actor: str, reason: str
    ) -> None: ...


@dataclass(frozen=True)
class NodeChange:
    """The outcome of a drain, resume or retire: the node's new status, when, who, why."""

    node: str
    status: str
    at: datetime
    actor: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        """Return the change as plain JSON data."""
        return {**self.__dict__, "at": self.at.isoformat()}


def drain_node(session: Session, name: str, *, at: datetime, actor: str, reason: str) -> NodeChange:
    """Stop giving an enrolled node deployments; its agent keeps reporting."""
    node = _node(session, name, at=at, reason=reason)
    if node.status != NodeStatus.ENROLLED:
        raise InvalidInputError(
            f"node {name} is {node.status}; only an enrolled node can be drained",
            hint=f"see its history: knightwatch history node:{name}",
        )
    _refuse_if_deploying(session, node, "drain")
    return _change(
        session, node, NodeStatus.DRAINED, node_drained, at=at, actor=actor, reason=reason
    )


def resume_node(
    session: Session, name: str, *, at: datetime, actor: str, reason: str
) -> NodeChange:
    """Give a drained node deployments again."""
    node = _node(session, name, at=at, reason=reason)
    if node.status != NodeStatus.DRAINED:
        raise InvalidInputError(
            f"node {name} is {node.status}; only a drained node can be resumed",
            hint=f"see its history: knightwatch history node:{name}",
        )
    return _change(
        session, node, NodeStatus.ENROLLED, node_resumed, at=at, actor=actor, reason=reason
    )


def retire_node(
    session: Session, name: str, *, at: datetime, actor: str, reason: str
) -> NodeChange:
    """Retire a node for good: revoke its credential and expire its unused join tokens."""
    node = _node(session, name, at=at, reason=reason)
    if node.status == NodeStatus.RETIRED:
        raise InvalidInputError(f"node {name} is already retired")
    _refuse_if_deploying(session, node, "retire")
    node.credential_hash = None
    for token in session.scalars(
        select(JoinToken).where(JoinToken.node_name == name, JoinToken.used_at.is_(None))
    ):
        token.expires_at = min(token.expires_at, at)
    return _change(
        session, node, NodeStatus.RETIRED, node_retired, at=at, actor=actor, reason=reason
    )


def _node(session: Session, name: str, *, at: datetime, reason: str) -> Node:
    """The node ``name``, with the fleet-wide lock held (no deployment starts meanwhile)."""
    if not reason.strip():
        raise InvalidInputError("a reason is required", hint='say why: --reason "…"')
    get_fleet(session, for_update=True, now=at)
    node = session.get(Node, name)
    if node is None:
        raise NotFoundError(f"no node {name!r}", hint="list nodes with: knightwatch status")
    return node


def _refuse_if_deploying(session: Session, node: Node, action: str) -> None:
    deployment = active_deployment(session)
    if deployment is None:
        return
    if session.get(DeploymentNode, (deployment.id, node.name)) is not None:
        raise GateRefusedError(
            f"cannot {action} node {node.name}: it is part of deployment {deployment.id}, "
            f"which is {deployment.state}",
            hint=f"wait for it to end: knightwatch deployment show {deployment.id}",
        )


def _change(
    session: Session,
    node: Node,
    status: str,
    recorder: _Recorder,
    *,
    at: datetime,
    actor: str,
    reason: str,
) -> NodeChange:
    node.status = status
    recorder(session, node, at=at, actor=actor, reason=reason)
    record_fleet_conditions(session, at)  # the fleet's membership changed
    return NodeChange(node.name, status, at, actor, reason)
