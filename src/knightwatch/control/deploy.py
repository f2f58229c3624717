"""The deployment orchestrator: two-phase, all-or-nothing, persisted (P1).

Every decision is made inside one store transaction that records the new
state *before* any command leaves the control plane; commands are sent only
after the commit. A control plane killed at any instant therefore restarts
into a recorded state, from which :meth:`Orchestrator.recover` either
finishes a rollback or abandons a prepare — never a split fleet.

    PREPARING ──all PREPARED──► COMMITTING ──all ACTIVE──► SUCCEEDED
        │      (canary: CANARY ─► SOAKING ─► COMMITTING)
        └─any failure/timeout─► FAILED (abort everywhere)
    CANARY / SOAKING / COMMITTING ─any failure/timeout─► ROLLING_BACK
    ROLLING_BACK ──all ROLLED_BACK──► ROLLED_BACK (else ROLLBACK_FAILED)

A target lost mid-deployment (its agent died, or its link did) is a failure
at once, not at the next deadline: lost before COMMIT was sent to it, the
deployment is FAILED (or, once a canary switched, rolled back) and no other
node switches; lost after, the whole fleet rolls back. Only the nodes that
may have switched are rolled back; the others (PREPARED, WAITING) are told to
abort and are never made to wait out a rollback they do not need. A node that
reconnects is told the outcome of every deployment it took part in: Abort for
a release it staged in vain, Rollback for one it may have switched to, Commit
(no switch: "run it") for the release its last deployment kept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.clock import Clock
from knightwatch.control.accounting import deployment_succeeded
from knightwatch.control.faults import crash_point
from knightwatch.control.fleet import record_fleet_conditions
from knightwatch.control.policy import (
    Action,
    deploy_proposal,
    enforce,
    reconcile_target,
    rollback_target,
)
from knightwatch.control.states import TERMINAL, DeploymentState, NodePhase, check_transition
from knightwatch.control.targets import lagging_nodes
from knightwatch.protocol import Abort, Ack, AckPhase, Commit, Prepare, Rollback
from knightwatch.store import (
    Database,
    Deployment,
    DeploymentEvent,
    DeploymentNode,
    Node,
    Release,
)
from knightwatch.store.queries import active_deployment, get_fleet, record_event

__all__ = ["CommandSink", "DeployRequest", "DeployTimeouts", "Orchestrator"]

log = logging.getLogger("knightwatch.deploy")
S, P = DeploymentState, NodePhase
Command = Prepare | Commit | Rollback | Abort
Outbox = list[tuple[str, Command]]

_ACK_PHASE = {
    AckPhase.PREPARED: P.PREPARED,
    AckPhase.PREPARE_FAILED: P.PREPARE_FAILED,
    AckPhase.ACTIVE: P.ACTIVE,
    AckPhase.COMMIT_FAILED: P.COMMIT_FAILED,
    AckPhase.ROLLED_BACK: P.ROLLED_BACK,
    AckPhase.ROLLBACK_FAILED: P.ROLLBACK_FAILED,
    AckPhase.ABORTED: P.ABORTED,
}
_SWITCHED = frozenset(  # a node in one of these phases may have switched its `current`
    {P.COMMITTING, P.ACTIVE, P.COMMIT_FAILED, P.ROLLING_BACK, P.ROLLED_BACK, P.ROLLBACK_FAILED}
)
_UNSWITCHED = frozenset({P.PREPARING, P.PREPARED, P.WAITING})  # staged at most: abort them
_EXPECTED = {  # which acks a node phase is waiting for
    P.PREPARING: {P.PREPARED, P.PREPARE_FAILED},
    P.COMMITTING: {P.ACTIVE, P.COMMIT_FAILED},
    P.ROLLING_BACK: {P.ROLLED_BACK, P.ROLLBACK_FAILED},
}


class CommandSink(Protocol):
    """Where commands to agents go (the agent WebSocket hub)."""

    def send(self, node: str, message: Command) -> bool:
        """Queue ``message`` for ``node``; False when the node is not connected."""
        ...


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
    strategy: Literal["atomic", "canary"] = "atomic"
    soak_s: float | None = None
    requested_by: str = "operator"
    kind: Literal["deploy", "rollback", "catchup", "reconcile"] = "deploy"


@dataclass
class _Step:
    """What one decision produced: commands to send and crash points passed."""

    outbox: Outbox = field(default_factory=list)
    transitions: list[str] = field(default_factory=list)


class Orchestrator:
    """Drives deployments through the two-phase protocol."""

    def __init__(
        self, db: Database, sink: CommandSink, clock: Clock, timeouts: DeployTimeouts
    ) -> None:
        self._db = db
        self._sink = sink
        self._clock = clock
        self._timeouts = timeouts
        self._failed_catchups: set[tuple[str, str]] = set()

    # -- operator actions -------------------------------------------------

    def start(self, request: DeployRequest) -> int:
        """Create a deployment and send PREPARE to every connected target."""
        step = _Step()
        with self._db.session() as session:
            self._lock(session)
            deployment = self._create(session, request, step)
            deployment_id = deployment.id
        self._finish(step)
        return deployment_id

    def start_rollback(self, requested_by: str = "operator") -> int:
        """Return the fleet to its previous release through the same protocol."""
        with self._db.session() as session:
            self._lock(session)
            target, selector = rollback_target(session)
        return self.start(
            DeployRequest(
                release=target, nodes=selector, requested_by=requested_by, kind="rollback"
            )
        )

    def start_reconcile(self, node: str, requested_by: str = "operator") -> int:
        """Re-stage the exact bytes of a node's release and restart it, through the protocol."""
        with self._db.session() as session:
            digest = reconcile_target(session, node)
        return self.start(
            DeployRequest(release=digest, nodes=node, requested_by=requested_by, kind="reconcile")
        )

    # -- events from agents -----------------------------------------------

    def on_ack(self, node: str, ack: Ack) -> None:
        """Record an agent's acknowledgement and advance the deployment."""
        step = _Step()
        with self._db.session() as session:
            self._lock(session)
            row = session.get(DeploymentNode, (ack.deployment_id, node))
            deployment = session.get(Deployment, ack.deployment_id)
            if row is None or deployment is None:
                log.warning("ack for unknown deployment %s from %s", ack.deployment_id, node)
                return
            phase = _ACK_PHASE[ack.phase]
            if deployment.state in TERMINAL or phase not in _EXPECTED.get(P(row.phase), set()):
                self._late_ack(session, deployment, row, phase, ack.reason, step)
                return
            self._set_phase(session, row, phase, ack.reason)
            step.transitions.append(f"node:{phase}")
            self._advance(session, deployment, step)
        self._finish(step)

    def _late_ack(
        self,
        session: Session,
        deployment: Deployment,
        row: DeploymentNode,
        phase: NodePhase,
        reason: str | None,
        step: _Step,
    ) -> None:
        """An ack its row no longer waits for: record what it settles on the node, no more."""
        if phase == P.ABORTED and row.phase == P.PREPARE_FAILED:  # keep why it failed
            record_event(
                session,
                row.deployment_id,
                f"node:{P.ABORTED}",
                at=self._clock.now(),
                node=row.node_name,
                detail=reason or "",
            )
        elif phase == P.ABORTED and row.phase in _UNSWITCHED:
            self._set_phase(session, row, phase, reason or row.reason)
        elif phase == P.ROLLED_BACK and row.phase == P.ROLLBACK_FAILED:
            when = "the deployment ended" if deployment.state in TERMINAL else "its failure"
            self._set_phase(session, row, phase, f"rolled back after {when} ({row.reason})")
            if deployment.state not in TERMINAL:
                self._advance(session, deployment, step)

    def on_ack_details(
        self,
        node: str,
        deployment_id: int,
        pid: int | None,
        started_at: float | None,
        version: str | None,
    ) -> None:
        """Record the service facts an ACTIVE node reported (pid, start, version)."""
        with self._db.session() as session:
            self._lock(session)
            row = session.get(DeploymentNode, (deployment_id, node))
            deployment = session.get(Deployment, deployment_id)
            if row is not None and deployment is not None and deployment.state not in TERMINAL:
                row.pid, row.started_at, row.version = pid, started_at, version

    def on_connect(self, node: str) -> None:
        """Tell a (re)connected node how its past deployments ended, then re-send what it owes.

        Outcomes first, oldest first: Abort for every ended deployment whose
        release it staged in vain and has not acknowledged aborting; for the
        last deployment that may have switched it, Rollback if its rollback was
        never acknowledged, or Commit of the kept release when its service is
        not running (an agent restarted mid-deployment waits for exactly this
        before it starts any service). Then what it owes the running deployment.
        """
        self._failed_catchups = {k for k in self._failed_catchups if k[0] != node}
        outbox: Outbox = []
        with self._db.session() as session:
            self._lock(session)
            deployment = active_deployment(session)
            outbox.extend(self._outcomes(session, node))
            if deployment is not None:
                row = session.get(DeploymentNode, (deployment.id, node))
                if row is not None:
                    outbox.extend(self._resend(session, deployment, row))
        self._send(outbox)

    def on_disconnect(self, node: str) -> None:
        """A target lost mid-deployment fails it at once (P1), whatever its phase.

        Lost before COMMIT was sent to it, the deployment is FAILED (nobody
        switches) or, once the canary switched, rolled back; lost after, the
        whole fleet rolls back. Nodes selected while already offline are left
        alone: they are caught up when they return.
        """
        step = _Step()
        with self._db.session() as session:
            self._lock(session)
            deployment = active_deployment(session)
            if deployment is None:
                return
            row = session.get(DeploymentNode, (deployment.id, node))
            if row is None:
                return
            state, phase = S(deployment.state), P(row.phase)
            if phase == P.PREPARING:
                self._set_phase(session, row, P.PREPARE_FAILED, "agent disconnected during PREPARE")
                self._advance(session, deployment, step)
            elif phase == P.COMMITTING:
                self._set_phase(session, row, P.COMMIT_FAILED, "agent disconnected during COMMIT")
                self._advance(session, deployment, step)
            elif state == S.PREPARING and phase == P.PREPARED:
                detail = "agent disconnected after PREPARED, before COMMIT"
                self._note_lost(session, row, detail)
                self._fail(session, deployment, f"{node}: {detail}", step)
            elif state in (S.CANARY, S.SOAKING, S.COMMITTING) and phase in (P.WAITING, P.ACTIVE):
                switched = "" if phase == P.ACTIVE else "; it had not switched"
                detail = f"agent disconnected during {state}{switched}"
                self._note_lost(session, row, detail)
                self._roll_back(session, deployment, f"{node}: {detail}", step)
            else:
                return
        self._finish(step)

    # -- time ---------------------------------------------------------------

    def tick(self) -> None:
        """Handle expired phase deadlines, then start catch-ups for returning nodes."""
        step = _Step()
        with self._db.session() as session:
            self._lock(session)
            deployment = active_deployment(session)
            if (
                deployment is not None
                and deployment.deadline is not None
                and self._clock.now() >= deployment.deadline
            ):
                self._expire(session, deployment, step)
        self._finish(step)
        self._start_catchup()

    def recover(self) -> None:
        """After a restart: abandon an unfinished PREPARE, roll back an unfinished switch."""
        step = _Step()
        with self._db.session() as session:
            self._lock(session)
            for node in session.scalars(select(Node)):
                node.connected = False
            deployment = active_deployment(session)
            if deployment is None:
                return
            state = S(deployment.state)
            reason = f"control plane restarted during {state}"
            if state == S.PREPARING:
                self._fail(session, deployment, reason + "; no node had switched", step)
            elif state == S.ROLLING_BACK:
                deployment.deadline = self._deadline(self._timeouts.rollback_s)
            else:
                self._roll_back(session, deployment, reason, step, send=False)
        self._finish(step)

    # -- decisions (inside a transaction) -----------------------------------

    def _create(self, session: Session, request: DeployRequest, step: _Step) -> Deployment:
        proposal, targets = deploy_proposal(
            session, Action(request.kind), request.release, request.nodes
        )
        enforce(session, proposal)  # every refusal of the safety policy, or none
        release = proposal.release
        assert release is not None
        now = self._clock.now()
        fleet = get_fleet(session)
        deployment = Deployment(
            kind=request.kind,
            release_digest=release.digest,
            from_digest=fleet.desired_digest,
            strategy=request.strategy,
            state=S.PREPARING,
            soak_s=request.soak_s if request.soak_s is not None else self._timeouts.canary_soak_s,
            requested_by=request.requested_by,
            created_at=now,
            updated_at=now,
            deadline=self._deadline(self._timeouts.prepare_s),
        )
        session.add(deployment)
        session.flush()
        canary = targets.online[0].name if request.strategy == "canary" else None
        for node in targets.all:
            online = node in targets.online
            session.add(
                DeploymentNode(
                    deployment_id=deployment.id,
                    node_name=node.name,
                    role="canary" if node.name == canary else "fleet",
                    previous_digest=node.active_digest,
                    phase=P.PREPARING if online else P.OFFLINE,
                    updated_at=now,
                    reason=None if online else "offline: brought to this release when it returns",
                )
            )
            if online:
                step.outbox.append(
                    (
                        node.name,
                        Prepare(
                            deployment_id=deployment.id,
                            digest=release.digest,
                            release_id=release.release_id,
                            restage=request.kind == "reconcile",
                        ),
                    )
                )
        record_event(
            session,
            deployment.id,
            "created",
            at=now,
            detail=f"{request.kind} {release.release_id} to {len(targets.online)} node(s)",
        )
        step.transitions.append(S.PREPARING)
        return deployment

    def _advance(self, session: Session, deployment: Deployment, step: _Step) -> None:
        rows = _rows(session, deployment)
        state = S(deployment.state)
        phases = [P(r.phase) for r in rows]
        if state == S.PREPARING:
            if P.PREPARE_FAILED in phases:
                self._fail(session, deployment, _reasons(rows, P.PREPARE_FAILED), step)
            elif all(p == P.PREPARED for p in phases):
                self._begin_switch(session, deployment, rows, step)
        elif state in (S.CANARY, S.COMMITTING):
            if P.COMMIT_FAILED in phases:
                self._roll_back(session, deployment, _reasons(rows, P.COMMIT_FAILED), step)
            elif state == S.CANARY and any(
                r.role == "canary" and r.phase == P.ACTIVE for r in rows
            ):
                self._transition(
                    session, deployment, S.SOAKING, step, deadline=self._deadline(deployment.soak_s)
                )
            elif state == S.COMMITTING and all(p == P.ACTIVE for p in phases):
                self._succeed(session, deployment, step)
        elif state == S.ROLLING_BACK and all(  # nodes that never switched are only aborted
            p in (P.ROLLED_BACK, P.ROLLBACK_FAILED) for p in phases if p in _SWITCHED
        ):
            failed = [r for r in rows if r.phase == P.ROLLBACK_FAILED]
            target = S.ROLLBACK_FAILED if failed else S.ROLLED_BACK
            if failed:
                deployment.reason = (
                    (deployment.reason or "")
                    + "; rollback failed on "
                    + _reasons(rows, P.ROLLBACK_FAILED)
                )
            self._transition(session, deployment, target, step, deadline=None)

    def _begin_switch(
        self, session: Session, deployment: Deployment, rows: list[DeploymentNode], step: _Step
    ) -> None:
        release = _release(session, deployment)
        canary = deployment.strategy == "canary" and len(rows) > 1
        target = S.CANARY if canary else S.COMMITTING
        self._transition(
            session, deployment, target, step, deadline=self._deadline(self._timeouts.commit_s)
        )
        for row in rows:
            if canary and row.role != "canary":
                self._set_phase(session, row, P.WAITING, None)
                continue
            self._set_phase(session, row, P.COMMITTING, None)
            step.outbox.append((row.node_name, _commit(deployment, release)))

    def _expire(self, session: Session, deployment: Deployment, step: _Step) -> None:
        rows = _rows(session, deployment)
        state = S(deployment.state)
        if state == S.SOAKING:
            self._after_soak(session, deployment, rows, step)
            return
        waiting = [r for r in rows if r.phase in _EXPECTED]
        names = ", ".join(r.node_name for r in waiting) or "none"
        reason = f"{state} timed out waiting for: {names}"
        for row in waiting:
            failed = {
                P.PREPARING: P.PREPARE_FAILED,
                P.COMMITTING: P.COMMIT_FAILED,
                P.ROLLING_BACK: P.ROLLBACK_FAILED,
            }[P(row.phase)]
            self._set_phase(session, row, failed, "timed out")
        if state == S.PREPARING:
            self._fail(session, deployment, reason, step)
        elif state == S.ROLLING_BACK:
            self._advance(session, deployment, step)
        else:
            self._roll_back(session, deployment, reason, step)

    def _after_soak(
        self, session: Session, deployment: Deployment, rows: list[DeploymentNode], step: _Step
    ) -> None:
        canary = next(r for r in rows if r.role == "canary")
        node = session.get(Node, canary.node_name)
        healthy = (
            node is not None
            and node.connected
            and node.service_state == "running"
            and node.active_digest == deployment.release_digest
        )
        if not healthy:
            detail = f"canary {canary.node_name} unhealthy after its soak"
            self._roll_back(session, deployment, detail, step)
            return
        gone = [
            r.node_name
            for r in rows
            if r.phase == P.WAITING
            and not getattr(session.get(Node, r.node_name), "connected", False)
        ]
        if gone:  # the fleet must not follow the canary without them (P1)
            self._roll_back(
                session, deployment, f"not connected after the soak: {', '.join(gone)}", step
            )
            return
        release = _release(session, deployment)
        self._transition(
            session,
            deployment,
            S.COMMITTING,
            step,
            deadline=self._deadline(self._timeouts.commit_s),
        )
        for row in rows:
            if row.phase == P.WAITING:
                self._set_phase(session, row, P.COMMITTING, None)
                step.outbox.append((row.node_name, _commit(deployment, release)))

    def _fail(self, session: Session, deployment: Deployment, reason: str, step: _Step) -> None:
        deployment.reason = reason
        self._transition(session, deployment, S.FAILED, step, deadline=None)
        for row in _rows(session, deployment):
            if row.phase in (P.PREPARED, P.PREPARING):
                step.outbox.append((row.node_name, _abort(deployment)))

    def _roll_back(
        self,
        session: Session,
        deployment: Deployment,
        reason: str,
        step: _Step,
        *,
        send: bool = True,
    ) -> None:
        deployment.reason = reason
        self._transition(
            session,
            deployment,
            S.ROLLING_BACK,
            step,
            deadline=self._deadline(self._timeouts.rollback_s),
        )
        for row in _rows(session, deployment):
            if row.phase in _UNSWITCHED:  # staged, never switched: abort, nothing to roll back
                row.reason = row.reason or "never switched: aborted, not rolled back"
            else:
                self._set_phase(session, row, P.ROLLING_BACK, row.reason)
            if send:
                step.outbox.extend(self._resend(session, deployment, row))

    def _succeed(self, session: Session, deployment: Deployment, step: _Step) -> None:
        self._transition(session, deployment, S.SUCCEEDED, step, deadline=None)
        deployment_succeeded(session, deployment, at=self._clock.now())  # before the fleet moves
        release = _release(session, deployment)
        for row in session.scalars(
            select(DeploymentNode).where(DeploymentNode.deployment_id == deployment.id)
        ):
            node = session.get(Node, row.node_name)
            if node is not None:
                node.desired_digest = deployment.release_digest
            if row.phase == P.ACTIVE:  # the outcome: an agent restarted later runs it at once
                step.outbox.append((row.node_name, _kept(deployment, release)))
        if deployment.kind in ("deploy", "rollback"):
            fleet = get_fleet(session)
            if fleet.desired_digest != deployment.release_digest:
                fleet.previous_digest = fleet.desired_digest
                fleet.desired_digest = deployment.release_digest
            fleet.updated_at = self._clock.now()
        record_fleet_conditions(session, self._clock.now())  # the fleet's desired state moved

    def _transition(
        self,
        session: Session,
        deployment: Deployment,
        target: DeploymentState,
        step: _Step,
        *,
        deadline: datetime | None,
    ) -> None:
        transition = check_transition(S(deployment.state), target)
        now = self._clock.now()
        deployment.state = target
        deployment.updated_at = now
        deployment.deadline = deadline
        if target in TERMINAL:
            deployment.finished_at = now
        record_event(
            session, deployment.id, target, at=now, detail=deployment.reason or transition.hazard
        )
        step.transitions.append(target)

    def _note_lost(self, session: Session, row: DeploymentNode, detail: str) -> None:
        """Record that a node's agent was lost, keeping its phase (what it had done)."""
        now = self._clock.now()
        row.reason, row.updated_at = detail, now
        record_event(
            session, row.deployment_id, "node:LOST", at=now, node=row.node_name, detail=detail
        )

    def _set_phase(
        self, session: Session, row: DeploymentNode, phase: NodePhase, reason: str | None
    ) -> None:
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

    def _resend(
        self, session: Session, deployment: Deployment, row: DeploymentNode
    ) -> Iterable[tuple[str, Command]]:
        phase = P(row.phase)
        if phase == P.ROLLING_BACK:
            return self._rollback_of(session, deployment, row)
        if phase in _UNSWITCHED and deployment.state in TERMINAL | {S.ROLLING_BACK}:
            return [(row.node_name, _abort(deployment))]
        release = _release(session, deployment)
        if phase == P.PREPARING:
            return [
                (
                    row.node_name,
                    Prepare(
                        deployment_id=deployment.id,
                        digest=release.digest,
                        release_id=release.release_id,
                        restage=deployment.kind == "reconcile",
                    ),
                )
            ]
        if phase == P.COMMITTING:
            return [(row.node_name, _commit(deployment, release))]
        return []

    def _outcomes(self, session: Session, node: str) -> Iterable[tuple[str, Command]]:
        """What ``node`` must still learn about deployments that ended (see on_connect)."""
        unsettled = session.execute(
            select(DeploymentNode, Deployment)
            .join(Deployment, Deployment.id == DeploymentNode.deployment_id)
            .where(
                DeploymentNode.node_name == node,
                DeploymentNode.phase.in_([*_UNSWITCHED, P.PREPARE_FAILED]),
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
        found: Outbox = [
            (node, _abort(deployment))
            for row, deployment in unsettled
            if row.phase != P.PREPARE_FAILED or deployment.id not in aborted
        ]
        last = session.scalars(
            select(DeploymentNode)
            .where(DeploymentNode.node_name == node, DeploymentNode.phase.in_(list(_SWITCHED)))
            .order_by(DeploymentNode.deployment_id.desc())
            .limit(1)
        ).first()
        ended = session.get(Deployment, last.deployment_id) if last is not None else None
        if last is None or ended is None or ended.state not in TERMINAL:
            return found
        if ended.state != S.SUCCEEDED:
            if last.phase != P.ROLLED_BACK:  # it never confirmed the rollback
                found.extend(self._rollback_of(session, ended, last))
            return found
        reported = session.get(Node, node)
        if (
            reported is not None
            and reported.active_digest == ended.release_digest
            and reported.service_state in ("none", "stopped")
        ):
            found.append((node, _kept(ended, _release(session, ended))))
        return found

    def _rollback_of(
        self, session: Session, deployment: Deployment, row: DeploymentNode
    ) -> list[tuple[str, Command]]:
        previous = session.get(Release, row.previous_digest) if row.previous_digest else None
        return [
            (
                row.node_name,
                Rollback(
                    deployment_id=deployment.id,
                    digest=row.previous_digest,
                    release_id=previous.release_id if previous else None,
                ),
            )
        ]

    def _start_catchup(self) -> None:
        with self._db.session() as session:
            self._lock(session)
            if active_deployment(session) is not None:
                return
            lagging = [
                n
                for n in lagging_nodes(session)
                if (n.name, n.desired_digest) not in self._failed_catchups
            ]
            if not lagging:
                return
            digest = lagging[0].desired_digest
            names = [n.name for n in lagging if n.desired_digest == digest]
        assert digest is not None
        for name in names:
            self._failed_catchups.add((name, digest))  # one automatic try per connection
        log.info("catch-up of %s to %s", ",".join(names), digest[:12])
        self.start(
            DeployRequest(
                release=digest,
                nodes=",".join(names),
                requested_by="knightwatch (catch-up)",
                kind="catchup",
            )
        )

    # -- plumbing -----------------------------------------------------------

    def _lock(self, session: Session) -> None:
        """Serialise decisions: on PostgreSQL the fleet row is the fleet-wide lock."""
        get_fleet(session, for_update=True, now=self._clock.now())

    def _deadline(self, seconds: float) -> datetime:
        return self._clock.now() + timedelta(seconds=seconds)

    def _finish(self, step: _Step) -> None:
        for name in step.transitions:
            crash_point(name)
        self._send(step.outbox)

    def _send(self, outbox: Outbox) -> None:
        for node, message in outbox:
            if not self._sink.send(node, message):
                log.info("node %s not connected; %s waits for its return", node, message.type)


def _rows(session: Session, deployment: Deployment) -> list[DeploymentNode]:
    return [
        r
        for r in session.scalars(
            select(DeploymentNode)
            .where(DeploymentNode.deployment_id == deployment.id)
            .order_by(DeploymentNode.node_name)
        )
        if r.phase != P.OFFLINE
    ]


def _release(session: Session, deployment: Deployment) -> Release:
    release = session.get(Release, deployment.release_digest)
    assert release is not None  # foreign key
    return release


def _commit(deployment: Deployment, release: Release) -> Commit:
    return Commit(
        deployment_id=deployment.id,
        digest=release.digest,
        release_id=release.release_id,
        restage=deployment.kind == "reconcile",
    )


def _kept(deployment: Deployment, release: Release) -> Commit:
    """A deployment's outcome for a node it switched: run this release (no switch, no restage)."""
    return Commit(deployment_id=deployment.id, digest=release.digest, release_id=release.release_id)


def _abort(deployment: Deployment) -> Abort:
    return Abort(deployment_id=deployment.id, digest=deployment.release_digest)


def _reasons(rows: list[DeploymentNode], phase: NodePhase) -> str:
    return "; ".join(f"{r.node_name}: {r.reason or phase}" for r in rows if r.phase == phase)
