"""Proposals: what an action would concern, resolved the same way for the action and its dry run.

The action (``deploy``, ``rollback``, …) and ``knightwatch check ACTION``
build their proposal with these functions, so the dry run evaluates exactly
what the action would.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.control.policy.model import Action, Proposal
from knightwatch.control.policy.table import evaluate
from knightwatch.control.targets import Targets, enrolled_nodes, resolve_release, select_targets
from knightwatch.errors import GateRefusedError, InvalidInputError, NotFoundError, Refusal
from knightwatch.selection import matches_selector, parse_selector
from knightwatch.store import Node
from knightwatch.store.queries import get_fleet
from knightwatch.vocabulary import NodeStatus

__all__ = [
    "deploy_proposal",
    "dry_run",
    "proposal_for",
    "reconcile_target",
    "rollback_target",
]


def deploy_proposal(
    session: Session, action: Action, release_ref: str, selector: str | None
) -> tuple[Proposal, Targets]:
    """The release ``release_ref`` names on the nodes ``selector`` selects, for ``action``."""
    release = resolve_release(session, release_ref)
    targets = select_targets(session, selector)
    return Proposal(action, release, tuple(targets.all)), targets


def rollback_target(session: Session) -> tuple[str, str | None]:
    """The fleet's previous release, and the nodes a rollback returns to it (None: all)."""
    fleet = get_fleet(session)
    if fleet.previous_digest is None or fleet.desired_digest is None:
        raise GateRefusedError(
            "there is no previous fleet release to roll back to",
            hint="a rollback needs one successful deploy before it",
        )
    current = fleet.desired_digest
    names = [n.name for n in enrolled_nodes(session) if n.desired_digest == current]
    return fleet.previous_digest, ",".join(names) or None


def reconcile_target(session: Session, node: str) -> str:
    """The digest a reconcile of ``node`` restores: its desired release (else the fleet's)."""
    row = session.get(Node, node)
    if row is None:
        raise NotFoundError(f"no node {node!r}", hint="list nodes with: knightwatch status")
    if row.status != NodeStatus.ENROLLED:
        raise InvalidInputError(
            f"node {node} is {row.status}; only an enrolled node can be reconciled",
            hint="list nodes with: knightwatch status",
        )
    digest = row.desired_digest or get_fleet(session).desired_digest
    if digest is None:
        raise GateRefusedError(
            f"nothing to reconcile {node} to: no release was ever deployed to it",
            hint="deploy a release first: knightwatch deploy RELEASE",
        )
    return digest


def dry_run(
    session: Session,
    action: Action,
    *,
    release: str | None = None,
    nodes: str | None = None,
    node: str | None = None,
) -> list[Refusal]:
    """What would refuse ``action`` now, without taking it (empty: nothing would)."""
    return evaluate(session, proposal_for(session, action, release=release, nodes=nodes, node=node))


def proposal_for(
    session: Session,
    action: Action,
    *,
    release: str | None = None,
    nodes: str | None = None,
    node: str | None = None,
) -> Proposal:
    """What ``action`` would concern with these arguments (flag actions have their own)."""
    if action is Action.DEPLOY:
        return deploy_proposal(session, action, _needed(release, action, "RELEASE"), nodes)[0]
    if action is Action.ROLLBACK:
        digest, selector = rollback_target(session)
        return deploy_proposal(session, action, digest, selector)[0]
    if action is Action.RECONCILE:
        name = _needed(node, action, "--node NODE")
        return deploy_proposal(session, action, reconcile_target(session, name), name)[0]
    if action is Action.RETIRE:
        return Proposal(action, resolve_release(session, _needed(release, action, "RELEASE")))
    if action is Action.REARM:
        return Proposal(action, nodes=tuple(_haltable(session, nodes)))
    raise InvalidInputError(f"{action} is the control plane's own action: nothing to check")


def _needed(value: str | None, action: Action, what: str) -> str:
    if not value:
        raise InvalidInputError(
            f"check {action} needs {what}",
            hint=f"for example: knightwatch check {action} --help",
        )
    return value


def _haltable(session: Session, selector: str | None) -> list[Node]:
    """The enrolled and drained nodes ``selector`` selects (what a halt or re-arm reaches)."""
    terms = parse_selector(selector)
    statement = (
        select(Node)
        .where(Node.status.in_((NodeStatus.ENROLLED, NodeStatus.DRAINED)))
        .order_by(Node.name)
    )
    return [n for n in session.scalars(statement) if matches_selector(n, terms)]
