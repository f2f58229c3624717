"""The checks of the safety policy: each finds every reason it refuses, never just the first.

Each check is a small class naming itself and the hazard it prevents (its
docstring); :mod:`knightwatch.control.policy.table` composes them per action.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.control.drift import drifted_nodes
from knightwatch.control.policy.model import Check, Proposal
from knightwatch.errors import Refusal
from knightwatch.store import Alert, Deployment, Node, Release, Retirement
from knightwatch.store.queries import get_fleet
from knightwatch.vocabulary import TERMINAL_STATES, AlertState, HaltSource, NodeStatus, Severity

__all__ = [
    "NoDrift",
    "NoRunningDeployment",
    "NoUnacknowledgedCritical",
    "NodesNotHalted",
    "ReleaseNotAlreadyRetired",
    "ReleaseNotInUse",
    "ReleaseNotRetired",
    "TargetsConnected",
]

_SUMMARY_SHOWN = 200


def _release(proposal: Proposal) -> Release:
    assert proposal.release is not None, f"{proposal.action} names no release"
    return proposal.release


class NoRunningDeployment(Check):
    """One deployment runs at a time: two would fight over which release each node runs."""

    name = "one-deployment-at-a-time"

    def find(self, session: Session, proposal: Proposal) -> Iterator[Refusal]:
        """Refuse while a deployment is not finished."""
        running = session.scalars(
            select(Deployment).where(Deployment.state.not_in(TERMINAL_STATES))
        ).all()
        for deployment in running:
            yield self.refuse(
                f"deployment {deployment.id} is {deployment.state}; one deployment runs at a time",
                [f"deployment {deployment.id}"],
                hint=f"wait for it: knightwatch deployment show {deployment.id}",
            )


class ReleaseNotRetired(Check):
    """A retired release (or one being retired) never runs again."""

    name = "release-not-retired"

    def find(self, session: Session, proposal: Proposal) -> Iterator[Refusal]:
        """Refuse a release that is retired or has a retirement recorded."""
        release = _release(proposal)
        retiring = session.scalars(
            select(Retirement).where(Retirement.release_digest == release.digest).limit(1)
        ).first()
        if release.retired_at is not None or retiring is not None:
            yield self.refuse(
                f"{release.release_id} is retired; a retired release is never deployed again",
                [release.release_id],
                hint="build and push a new release instead",
            )


class ReleaseNotAlreadyRetired(Check):
    """Retiring twice would announce a retirement that already finished."""

    name = "release-not-already-retired"

    def find(self, session: Session, proposal: Proposal) -> Iterator[Refusal]:
        """Refuse a release whose retirement finished."""
        release = _release(proposal)
        if release.retired_at is not None:
            yield self.refuse(
                f"{release.release_id} is already retired",
                [release.release_id],
                hint=f"see its history: knightwatch history {release.release_id}",
            )


class ReleaseNotInUse(Check):
    """A release still active, a rollback target or in a running deployment is never deleted."""

    name = "release-not-in-use"

    def find(self, session: Session, proposal: Proposal) -> Iterator[Refusal]:
        """Refuse once for the fleet's use, each node's use and each running deployment."""
        release = _release(proposal)
        yield from self._fleet(session, release)
        yield from self._nodes(session, release)
        yield from self._deployments(session, release)

    def _fleet(self, session: Session, release: Release) -> Iterator[Refusal]:
        fleet = get_fleet(session)
        subjects = [release.release_id]
        if release.digest == fleet.desired_digest:
            yield self.refuse(
                f"{release.release_id} is the fleet's active release",
                subjects,
                hint="deploy another release first",
            )
        if release.digest == fleet.previous_digest:
            yield self.refuse(
                f"{release.release_id} is the fleet's rollback target",
                subjects,
                hint="it stops being one after the next successful deploy",
            )

    def _nodes(self, session: Session, release: Release) -> Iterator[Refusal]:
        nodes = session.scalars(
            select(Node).where(Node.status != NodeStatus.RETIRED).order_by(Node.name)
        )
        for node in nodes:
            for role, value in (
                ("active", node.active_digest),
                ("rollback target", node.previous_digest),
                ("desired release", node.desired_digest),
            ):
                if value == release.digest:
                    yield self.refuse(
                        f"{release.release_id} is the {role} on {node.name}",
                        [release.release_id, node.name],
                        hint="deploy another release to that node first",
                    )

    def _deployments(self, session: Session, release: Release) -> Iterator[Refusal]:
        digest = release.digest
        running = session.scalars(
            select(Deployment)
            .where(
                Deployment.state.not_in(TERMINAL_STATES),
                (Deployment.release_digest == digest) | (Deployment.from_digest == digest),
            )
            .order_by(Deployment.id)
        )
        for deployment in running:
            yield self.refuse(
                f"deployment {deployment.id} ({deployment.state}) involves {release.release_id}",
                [release.release_id, f"deployment {deployment.id}"],
                hint=f"wait for it: knightwatch deployment show {deployment.id}",
            )


class NodesNotHalted(Check):
    """A node the kill switch holds halted runs nothing new until an operator re-arms it."""

    name = "nodes-not-halted"

    def find(self, session: Session, proposal: Proposal) -> Iterator[Refusal]:
        """Refuse once per cause (source and reason), naming every node it holds."""
        causes: dict[str, list[str]] = {}
        for node in sorted(proposal.nodes, key=lambda n: n.name):
            if node.halted:
                why = f"{node.halt_source or HaltSource.KILL}" + (
                    f": {node.halt_reason}" if node.halt_reason else ""
                )
                causes.setdefault(why, []).append(node.name)
        for why, names in causes.items():
            joined = ",".join(names)
            yield self.refuse(
                f"{joined} halted by the kill switch ({why})",
                names,
                hint=f"lift the halt first: knightwatch rearm --nodes {joined} --reason TEXT",
            )


class TargetsConnected(Check):
    """A change reaches nodes through their agents: with none connected, nothing would move."""

    name = "targets-connected"

    def find(self, session: Session, proposal: Proposal) -> Iterator[Refusal]:
        """Refuse when the proposal names nodes and not one of them is connected."""
        if proposal.nodes and not any(node.connected for node in proposal.nodes):
            names = sorted(proposal.node_names)
            yield self.refuse(
                f"none of the {len(names)} selected nodes is connected",
                names,
                hint="start their agents (knightwatch status shows who is connected), then retry",
            )


class NoUnacknowledgedCritical(Check):
    """Someone must have looked at a critical alert before the fleet is changed under it.

    In scope: an alert on one of the proposal's nodes (every node when it
    names none), or an alert with no node (it concerns the whole fleet).
    """

    name = "no-unacknowledged-critical"

    def find(self, session: Session, proposal: Proposal) -> Iterator[Refusal]:
        """Refuse once per firing critical alert in scope."""
        scope = set(proposal.node_names) or None
        statement = (
            select(Alert)
            .where(Alert.state == AlertState.FIRING, Alert.severity == Severity.CRITICAL)
            .order_by(Alert.id)
        )
        for alert in session.scalars(statement):
            if alert.node_name is not None and scope is not None and alert.node_name not in scope:
                continue
            where = alert.node_name or "the fleet"
            yield self.refuse(
                f"unacknowledged critical alert #{alert.id} {alert.rule} on {where} "
                f"— {alert.summary[:_SUMMARY_SHOWN]}",
                [f"alert #{alert.id}", alert.node_name or "fleet"],
                hint="look at it (knightwatch alerts list), "
                f"then: knightwatch alerts ack {alert.id}",
            )


class NoDrift(Check):
    """A drifted fleet is not changed further until the drift is reconciled (P2).

    ``in_scope``: only the proposal's nodes count (a flag change in one group
    is not refused for drift elsewhere); otherwise the whole fleet does.
    """

    name = "no-drift"

    def __init__(self, *, in_scope: bool = False) -> None:
        self.in_scope = in_scope

    def find(self, session: Session, proposal: Proposal) -> Iterator[Refusal]:
        """Refuse once per DRIFTED node (of the fleet, or in scope), with its first finding."""
        for node in drifted_nodes(session, proposal.node_names if self.in_scope else None):
            findings: list[dict[str, Any]] = json.loads(node.drift_findings or "[]")
            example = findings[0]["detail"] if findings else "see its audit"
            yield self.refuse(
                f"the fleet has drift on {node.name} ({example})",
                [node.name],
                hint=f"inspect with: knightwatch audit --node {node.name} --files; "
                f"restore with: knightwatch reconcile --node {node.name}",
            )
