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
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.clock import Clock
from knightwatch.control.catchup import CATCHUP_ACTOR, CatchUp
from knightwatch.control.decisions import (
    EXPECTED_ACKS,
    UNSWITCHED,
    disconnected,
    expire,
)
from knightwatch.control.deploy_commands import (
    Outbox,
    outcomes_for,
    resend,
)
from knightwatch.control.deploy_record import DeploymentRecord, Step
from knightwatch.control.deploy_requests import DeployRequest, DeployTimeouts, create_deployment
from knightwatch.control.fanout import Sink, send_each
from knightwatch.control.faults import crash_point
from knightwatch.control.policy import (
    reconcile_target,
    rollback_target,
)
from knightwatch.protocol import Ack, AckPhase, DeployCommand
from knightwatch.store import Database, Deployment, DeploymentNode, Node
from knightwatch.store.batches import apply_item, fast_then_isolated
from knightwatch.store.queries import active_deployment, get_fleet, record_event
from knightwatch.vocabulary import (
    TERMINAL_STATES,
    DeploymentKind,
    DeploymentState,
    DeploymentStrategy,
    NodePhase,
)

ServiceFacts = tuple[int | None, float | None, str | None]
"""(pid, started_at, version) of a node's service, as its report gave them."""

__all__ = ["CommandSink", "Orchestrator", "ServiceFacts"]

log = logging.getLogger("knightwatch.deploy")
S, P = DeploymentState, NodePhase

_ACK_PHASE = {
    AckPhase.PREPARED: P.PREPARED,
    AckPhase.PREPARE_FAILED: P.PREPARE_FAILED,
    AckPhase.ACTIVE: P.ACTIVE,
    AckPhase.COMMIT_FAILED: P.COMMIT_FAILED,
    AckPhase.ROLLED_BACK: P.ROLLED_BACK,
    AckPhase.ROLLBACK_FAILED: P.ROLLBACK_FAILED,
    AckPhase.ABORTED: P.ABORTED,
}


CommandSink = Sink[DeployCommand]
"""Where deployment commands go (the agent WebSocket hub)."""


class Orchestrator:
    """Drives deployments through the two-phase protocol."""

    def __init__(
        self, db: Database, sink: CommandSink, clock: Clock, timeouts: DeployTimeouts
    ) -> None:
        self._db = db
        self._sink = sink
        self._clock = clock
        self._timeouts = timeouts
        self._catchup = CatchUp()
        self._record = DeploymentRecord(clock, timeouts)

    # -- operator actions -------------------------------------------------

    def start(self, request: DeployRequest) -> int:
        """Create a deployment and send PREPARE to every connected target."""
        step = Step()
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
                release=target,
                nodes=selector,
                requested_by=requested_by,
                kind=DeploymentKind.ROLLBACK,
            )
        )

    def start_reconcile(self, node: str, requested_by: str = "operator") -> int:
        """Re-stage the exact bytes of a node's release and restart it, through the protocol."""
        with self._db.session() as session:
            digest = reconcile_target(session, node)
        return self.start(
            DeployRequest(
                release=digest, nodes=node, requested_by=requested_by, kind=DeploymentKind.RECONCILE
            )
        )

    # -- events from agents -----------------------------------------------

    def on_ack(self, node: str, ack: Ack, service: ServiceFacts | None = None) -> None:
        """Record an agent's acknowledgement and advance the deployment (raise if it failed).

        ``service`` is what the node's report said of its service (pid, start,
        version), recorded on the node's row while the deployment runs.
        """
        [failure] = self.on_acks([(node, ack, service)])
        if failure is not None:
            raise failure

    def on_acks(
        self, acks: Sequence[tuple[str, Ack, ServiceFacts | None]]
    ) -> list[Exception | None]:
        """Record acknowledgements that arrived together: one transaction, a savepoint each.

        A fleet's acks come in bursts; one commit for all of them, and one
        decision per deployment once they are all recorded (deciding after each
        ack reads every target row each time: quadratic at 10,000 nodes), is
        what keeps a large deployment's rounds short. An ack that fails is
        rolled back alone and its failure returned in its place; commands go
        out only after the commit.
        """
        step, failures = fast_then_isolated(
            lambda isolated: self._record_acks(acks, isolated=isolated), "a batch of acks"
        )
        self._finish(step)
        return failures

    def _record_acks(
        self, acks: Sequence[tuple[str, Ack, ServiceFacts | None]], *, isolated: bool
    ) -> tuple[Step, list[Exception | None]]:
        """One try at recording ``acks`` (see :mod:`knightwatch.store.batches`)."""
        step = Step()
        failures: list[Exception | None] = []
        moved: dict[int, Deployment] = {}
        with self._db.session() as session:
            self._lock(session)
            held = _load_ack_rows(session, acks)  # one query per deployment, not one per ack
            for node, ack, service in acks:
                record = partial(self._record_ack, session, node, ack, service, step)
                outcome = apply_item(session, record, isolated=isolated)
                if isinstance(outcome, Exception):
                    log.error("the ack of %s from %s failed", ack.phase, node, exc_info=outcome)
                    failures.append(outcome)
                    continue
                if outcome is not None:
                    moved[outcome.id] = outcome
                failures.append(None)
            for deployment in moved.values():  # once per deployment, not once per ack
                self._record.advance(session, deployment, step)
            del held
        return step, failures

    def _record_ack(
        self, session: Session, node: str, ack: Ack, service: ServiceFacts | None, step: Step
    ) -> Deployment | None:
        """Record one ack on its node's row; the deployment to advance, if it may move."""
        row = session.get(DeploymentNode, (ack.deployment_id, node))
        deployment = session.get(Deployment, ack.deployment_id)
        if row is None or deployment is None:
            log.warning("ack for unknown deployment %s from %s", ack.deployment_id, node)
            return None
        if service is not None and deployment.state not in TERMINAL_STATES:
            row.pid, row.started_at, row.version = service
        phase = _ACK_PHASE[ack.phase]
        if deployment.state in TERMINAL_STATES or phase not in EXPECTED_ACKS.get(
            P(row.phase), frozenset()
        ):
            self._late_ack(session, deployment, row, phase, ack.reason, step)
            return None
        self._record.set_phase(session, row, phase, ack.reason)
        step.transitions.append(f"node:{phase}")
        return deployment

    def _late_ack(
        self,
        session: Session,
        deployment: Deployment,
        row: DeploymentNode,
        phase: NodePhase,
        reason: str | None,
        step: Step,
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
        elif phase == P.ABORTED and row.phase in UNSWITCHED:
            self._record.set_phase(session, row, phase, reason or row.reason)
        elif phase == P.ROLLED_BACK and row.phase == P.ROLLBACK_FAILED:
            when = "the deployment ended" if deployment.state in TERMINAL_STATES else "its failure"
            self._record.set_phase(session, row, phase, f"rolled back after {when} ({row.reason})")
            if deployment.state not in TERMINAL_STATES:
                self._record.advance(session, deployment, step)

    def on_connect(self, node: str) -> None:
        """Tell a (re)connected node how its past deployments ended, then re-send what it owes.

        Outcomes first, oldest first: Abort for every ended deployment whose
        release it staged in vain and has not acknowledged aborting; for the
        last deployment that may have switched it, Rollback if its rollback was
        never acknowledged, or Commit of the kept release when its service is
        not running (an agent restarted mid-deployment waits for exactly this
        before it starts any service). Then what it owes the running deployment.
        """
        self.on_connects([node])

    def on_connects(self, nodes: Sequence[str]) -> None:
        """:meth:`on_connect` for nodes that greeted together, in one transaction."""
        outbox: Outbox = []
        with self._db.session() as session:
            self._lock(session)
            deployment = active_deployment(session)
            for node in nodes:
                self._catchup.forget(node)
                outbox.extend(outcomes_for(session, node))
                if deployment is not None:
                    row = session.get(DeploymentNode, (deployment.id, node))
                    if row is not None:
                        outbox.extend(resend(session, deployment, row))
        self._send(outbox)

    def on_disconnect(self, node: str) -> None:
        """A target lost mid-deployment fails it at once (P1), whatever its phase.

        Lost before COMMIT was sent to it, the deployment is FAILED (nobody
        switches) or, once the canary switched, rolled back; lost after, the
        whole fleet rolls back. Nodes selected while already offline are left
        alone: they are caught up when they return.
        """
        step = Step()
        with self._db.session() as session:
            self._lock(session)
            deployment = active_deployment(session)
            if deployment is None:
                return
            row = session.get(DeploymentNode, (deployment.id, node))
            if row is None:
                return
            facts = self._record.facts(session, deployment)
            lost = next((f for f in facts if f.name == node), None)
            if lost is None:  # selected while offline: caught up when it returns
                return
            canary = deployment.strategy == DeploymentStrategy.CANARY
            decision = disconnected(S(deployment.state), lost, facts, canary=canary)
            self._record.apply(session, deployment, decision, step)
        self._finish(step)

    # -- time ---------------------------------------------------------------

    def tick(self) -> None:
        """Handle expired phase deadlines, then start catch-ups for returning nodes."""
        step = Step()
        with self._db.session() as session:
            self._lock(session)
            deployment = active_deployment(session)
            if (
                deployment is not None
                and deployment.deadline is not None
                and self._clock.now() >= deployment.deadline
            ):
                decision = expire(S(deployment.state), self._record.facts(session, deployment))
                self._record.apply(session, deployment, decision, step)
        self._finish(step)
        self._start_catchup()

    def recover(self) -> None:
        """After a restart: abandon an unfinished PREPARE, roll back an unfinished switch."""
        step = Step()
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
                self._record.fail(session, deployment, reason + "; no node had switched", step)
            elif state == S.ROLLING_BACK:
                deployment.deadline = self._deadline(self._timeouts.rollback_s)
            else:
                self._record.roll_back(session, deployment, reason, step, send=False)
        self._finish(step)

    # -- decisions (inside a transaction) -----------------------------------

    def _create(self, session: Session, request: DeployRequest, step: Step) -> Deployment:
        deployment, prepares = create_deployment(
            session, request, self._timeouts, self._clock.now()
        )
        step.outbox.extend(prepares)
        step.transitions.append(S.PREPARING)
        return deployment

    def _start_catchup(self) -> None:
        with self._db.session() as session:
            self._lock(session)
            plan = self._catchup.next_plan(session)
        if plan is None:
            return
        digest, names = plan
        log.info("catch-up of %s to %s", ",".join(names), digest[:12])
        self.start(
            DeployRequest(
                release=digest,
                nodes=",".join(names),
                requested_by=CATCHUP_ACTOR,
                kind=DeploymentKind.CATCHUP,
            )
        )

    # -- plumbing -----------------------------------------------------------

    def _lock(self, session: Session) -> None:
        """Serialise decisions: on PostgreSQL the fleet row is the fleet-wide lock."""
        get_fleet(session, for_update=True, now=self._clock.now())

    def _deadline(self, seconds: float) -> datetime:
        return self._clock.now() + timedelta(seconds=seconds)

    def _finish(self, step: Step) -> None:
        for name in step.transitions:
            crash_point(name)
        self._send(step.outbox)

    def _send(self, outbox: Outbox) -> None:
        for node in send_each(self._sink, outbox, log):
            log.info("node %s not connected; its command waits for its return", node)


def _load_ack_rows(
    session: Session, acks: Sequence[tuple[str, Ack, ServiceFacts | None]]
) -> list[DeploymentNode]:
    """Load the rows the acks will write, a query per deployment (the session keeps them)."""
    nodes_by_deployment: dict[int, set[str]] = {}
    for node, ack, _ in acks:
        nodes_by_deployment.setdefault(ack.deployment_id, set()).add(node)
    rows: list[DeploymentNode] = []
    for deployment_id, nodes in nodes_by_deployment.items():
        statement = select(DeploymentNode).where(
            DeploymentNode.deployment_id == deployment_id, DeploymentNode.node_name.in_(nodes)
        )
        rows.extend(session.scalars(statement))
    return rows
