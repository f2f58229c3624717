"""Recording a deployment's decisions: its state, its nodes' phases, its events, its commands.

:class:`DeploymentRecord` writes one decision of :mod:`knightwatch.control.decisions`
into the caller's transaction and collects the commands it implies in a
:class:`Step`; the orchestrator sends them only after the commit (P1:
recorded before acted on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.clock import Clock
from knightwatch.control import auditlog
from knightwatch.control.accounting import deployment_succeeded
from knightwatch.control.decisions import UNSWITCHED, Decision, Move, NodeFacts, advance
from knightwatch.control.deploy_commands import (
    Outbox,
    abort_command,
    commit_command,
    kept_command,
    release_of,
    resend,
)
from knightwatch.control.deploy_requests import DeployTimeouts
from knightwatch.control.fleet import record_fleet_conditions
from knightwatch.control.states import check_transition
from knightwatch.store import Deployment, DeploymentNode, Node
from knightwatch.store.queries import get_fleet, record_event
from knightwatch.vocabulary import (
    TERMINAL_STATES,
    DeploymentKind,
    DeploymentState,
    DeploymentStrategy,
    NodePhase,
    NodeRole,
    ServiceState,
)

__all__ = ["DeploymentRecord", "Step", "targets_of"]

S, P = DeploymentState, NodePhase


@dataclass
class Step:
    """What one decision produced: commands to send and crash points passed."""

    outbox: Outbox = field(default_factory=list)
    transitions: list[str] = field(default_factory=list)


class DeploymentRecord:
    """Writes decisions about deployments into a transaction."""

    def __init__(self, clock: Clock, timeouts: DeployTimeouts) -> None:
        self._clock = clock
        self._timeouts = timeouts

    def advance(self, session: Session, deployment: Deployment, step: Step) -> None:
        """After an acknowledgement or a settled node: record whatever move follows."""
        facts = self.facts(session, deployment)
        canary = deployment.strategy == DeploymentStrategy.CANARY
        self.apply(session, deployment, advance(S(deployment.state), facts, canary=canary), step)

    def facts(self, session: Session, deployment: Deployment) -> list[NodeFacts]:
        """The deployment's targets as the decisions see them (OFFLINE rows left out).

        One query for rows and nodes together, of plain columns, not ORM objects:
        this runs after every batch of acknowledgements, over every target.
        """
        rows = session.execute(
            select(
                DeploymentNode.node_name,
                DeploymentNode.phase,
                DeploymentNode.role,
                DeploymentNode.reason,
                Node.connected,
                Node.service_state,
                Node.active_digest,
            )
            .join(Node, Node.name == DeploymentNode.node_name)
            .where(
                DeploymentNode.deployment_id == deployment.id,
                DeploymentNode.phase != P.OFFLINE,
            )
            .order_by(DeploymentNode.node_name)
        )
        release = deployment.release_digest
        return [
            NodeFacts(
                name=name,
                phase=P(phase),
                role=role,
                reason=reason,
                connected=connected,
                running_release=service_state == ServiceState.RUNNING and active == release,
            )
            for name, phase, role, reason, connected, service_state, active in rows
        ]

    def apply(
        self, session: Session, deployment: Deployment, decision: Decision, step: Step
    ) -> None:
        """Record a decision: nodes it settles first, then the deployment's move."""
        if decision.move == Move.STAY and not decision.node_phases and not decision.lost:
            return  # the usual answer to a batch of acks: no need to load every target
        rows = {r.node_name: r for r in targets_of(session, deployment)}
        for name, phase, reason in decision.node_phases:
            self.set_phase(session, rows[name], phase, reason)
        for name, detail in decision.lost:
            self.note_lost(session, rows[name], detail)
        move, reason = decision.move, decision.reason or ""
        if move == Move.SWITCH:
            assert decision.target is not None
            self.begin_switch(session, deployment, list(rows.values()), decision.target, step)
        elif move == Move.SOAK:
            soak = self._deadline(deployment.soak_s)
            self.transition(session, deployment, S.SOAKING, step, deadline=soak)
        elif move == Move.COMMIT_FLEET:
            self.commit_waiting(session, deployment, list(rows.values()), step)
        elif move == Move.SUCCEED:
            self.succeed(session, deployment, step)
        elif move == Move.FAIL:
            self.fail(session, deployment, reason, step)
        elif move == Move.ROLL_BACK:
            self.roll_back(session, deployment, reason, step)
        elif move == Move.END_ROLLBACK:
            assert decision.target is not None
            if reason:
                deployment.reason = (deployment.reason or "") + "; " + reason
            self.transition(session, deployment, decision.target, step, deadline=None)

    def begin_switch(
        self,
        session: Session,
        deployment: Deployment,
        rows: Sequence[DeploymentNode],
        target: DeploymentState,
        step: Step,
    ) -> None:
        """Every target prepared: COMMIT to all, or to the canary with the rest WAITING."""
        release = release_of(session, deployment)
        deadline = self._deadline(self._timeouts.commit_s)
        self.transition(session, deployment, target, step, deadline=deadline)
        for row in rows:
            if target == S.CANARY and row.role != NodeRole.CANARY:
                self.set_phase(session, row, P.WAITING, None)
                continue
            self.set_phase(session, row, P.COMMITTING, None)
            step.outbox.append((row.node_name, commit_command(deployment, release)))

    def commit_waiting(
        self, session: Session, deployment: Deployment, rows: Sequence[DeploymentNode], step: Step
    ) -> None:
        """The canary's soak proved it: the waiting nodes switch too."""
        release = release_of(session, deployment)
        deadline = self._deadline(self._timeouts.commit_s)
        self.transition(session, deployment, S.COMMITTING, step, deadline=deadline)
        for row in rows:
            if row.phase == P.WAITING:
                self.set_phase(session, row, P.COMMITTING, None)
                step.outbox.append((row.node_name, commit_command(deployment, release)))

    def fail(self, session: Session, deployment: Deployment, reason: str, step: Step) -> None:
        """FAILED: nobody switched; every node that staged the release is told to abort."""
        deployment.reason = reason
        self.transition(session, deployment, S.FAILED, step, deadline=None)
        for row in targets_of(session, deployment):
            if row.phase in (P.PREPARED, P.PREPARING):
                step.outbox.append((row.node_name, abort_command(deployment)))

    def roll_back(
        self,
        session: Session,
        deployment: Deployment,
        reason: str,
        step: Step,
        *,
        send: bool = True,
    ) -> None:
        """ROLLING_BACK: every node that may have switched rolls back; the rest abort."""
        deployment.reason = reason
        self.transition(
            session,
            deployment,
            S.ROLLING_BACK,
            step,
            deadline=self._deadline(self._timeouts.rollback_s),
        )
        for row in targets_of(session, deployment):
            if row.phase in UNSWITCHED:  # staged, never switched: abort, nothing to roll back
                row.reason = row.reason or "never switched: aborted, not rolled back"
            else:
                self.set_phase(session, row, P.ROLLING_BACK, row.reason)
            if send:
                step.outbox.extend(resend(session, deployment, row))

    def succeed(self, session: Session, deployment: Deployment, step: Step) -> None:
        """SUCCEEDED: every node ACTIVE; the nodes' and the fleet's desired release move."""
        self.transition(session, deployment, S.SUCCEEDED, step, deadline=None)
        deployment_succeeded(session, deployment, at=self._clock.now())  # before the fleet moves
        release = release_of(session, deployment)
        for row in session.scalars(
            select(DeploymentNode).where(DeploymentNode.deployment_id == deployment.id)
        ):
            node = session.get(Node, row.node_name)
            if node is not None:
                node.desired_digest = deployment.release_digest
            if row.phase == P.ACTIVE:  # the outcome: an agent restarted later runs it at once
                step.outbox.append((row.node_name, kept_command(deployment, release)))
        if deployment.kind in (DeploymentKind.DEPLOY, DeploymentKind.ROLLBACK):
            fleet = get_fleet(session)
            if fleet.desired_digest != deployment.release_digest:
                fleet.previous_digest = fleet.desired_digest
                fleet.desired_digest = deployment.release_digest
            fleet.updated_at = self._clock.now()
        record_fleet_conditions(session, self._clock.now())  # the fleet's desired state moved

    def transition(
        self,
        session: Session,
        deployment: Deployment,
        target: DeploymentState,
        step: Step,
        *,
        deadline: datetime | None,
    ) -> None:
        """Move the deployment along a declared transition and record the event."""
        transition = check_transition(S(deployment.state), target)
        now = self._clock.now()
        deployment.state = target
        deployment.updated_at = now
        deployment.deadline = deadline
        if target in TERMINAL_STATES:
            deployment.finished_at = now
        record_event(
            session, deployment.id, target, at=now, detail=deployment.reason or transition.hazard
        )
        auditlog.append(
            session,
            actor="knightwatch",
            action=f"deployment.{target.value.lower()}",
            obj=f"deployment {deployment.id}",
            at=now,
            payload={"release": deployment.release_digest, "reason": deployment.reason},
        )
        step.transitions.append(target)

    def note_lost(self, session: Session, row: DeploymentNode, detail: str) -> None:
        """Record that a node's agent was lost, keeping its phase (what it had done)."""
        now = self._clock.now()
        row.reason, row.updated_at = detail, now
        record_event(
            session, row.deployment_id, "node:LOST", at=now, node=row.node_name, detail=detail
        )

    def set_phase(
        self, session: Session, row: DeploymentNode, phase: NodePhase, reason: str | None
    ) -> None:
        """Record a node's new phase (and why) with its event."""
        now = self._clock.now()
        row.phase, row.reason, row.updated_at = phase, reason, now
        record_event(
            session,
            row.deployment_id,
            f"node:{phase}",
            at=now,
            node=row.node_name,
            detail=reason or "",
        )

    def _deadline(self, seconds: float) -> datetime:
        return self._clock.now() + timedelta(seconds=seconds)


def targets_of(session: Session, deployment: Deployment) -> list[DeploymentNode]:
    """A deployment's rows, by node name, without the OFFLINE ones (caught up later)."""
    return [
        r
        for r in session.scalars(
            select(DeploymentNode)
            .where(DeploymentNode.deployment_id == deployment.id)
            .order_by(DeploymentNode.node_name)
        )
        if r.phase != P.OFFLINE
    ]
