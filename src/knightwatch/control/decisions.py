"""What a deployment does next: pure functions of its state, its nodes and the clock.

The orchestrator (:mod:`knightwatch.control.deploy`) loads a deployment and
its node rows in a transaction, asks one of these functions what follows, and
applies the answer — recording it, then sending commands after the commit.
Nothing here reads the store, sends anything or looks at a clock, so every
rule of the two-phase protocol is testable with plain values
(tests/control/test_decisions.py). Every move of the deployment is checked
against :data:`knightwatch.control.states.TRANSITIONS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from knightwatch.control.states import check_transition
from knightwatch.vocabulary import DeploymentState, NodePhase, NodeRole

__all__ = [
    "EXPECTED_ACKS",
    "SWITCHED",
    "UNSWITCHED",
    "Decision",
    "Move",
    "NodeFacts",
    "advance",
    "after_soak",
    "disconnected",
    "expire",
]

S, P = DeploymentState, NodePhase

SWITCHED = frozenset(  # a node in one of these phases may have switched its `current`
    {P.COMMITTING, P.ACTIVE, P.COMMIT_FAILED, P.ROLLING_BACK, P.ROLLED_BACK, P.ROLLBACK_FAILED}
)
UNSWITCHED = frozenset({P.PREPARING, P.PREPARED, P.WAITING})  # staged at most: abort them
EXPECTED_ACKS = {  # which acks a node phase is waiting for
    P.PREPARING: frozenset({P.PREPARED, P.PREPARE_FAILED}),
    P.COMMITTING: frozenset({P.ACTIVE, P.COMMIT_FAILED}),
    P.ROLLING_BACK: frozenset({P.ROLLED_BACK, P.ROLLBACK_FAILED}),
}
_LOST_DURING = {  # a node lost while a command to it was unanswered: what it failed
    P.PREPARING: (P.PREPARE_FAILED, "PREPARE"),
    P.COMMITTING: (P.COMMIT_FAILED, "COMMIT"),
}
_TIMED_OUT = {
    P.PREPARING: P.PREPARE_FAILED,
    P.COMMITTING: P.COMMIT_FAILED,
    P.ROLLING_BACK: P.ROLLBACK_FAILED,
}


@dataclass(frozen=True)
class NodeFacts:
    """One target of a deployment, as a decision sees it."""

    name: str
    phase: NodePhase
    role: str = NodeRole.FLEET
    """``canary`` or ``fleet``."""
    reason: str | None = None
    connected: bool = True
    running_release: bool = False
    """Its service is running the deployment's release (what a canary's soak must prove)."""


class Move(StrEnum):
    """What the orchestrator does to a deployment."""

    STAY = "stay"
    """Nothing yet: wait for more acknowledgements or the deadline."""
    SWITCH = "switch"
    """Every target prepared: COMMIT to all (or to the canary, the rest WAITING)."""
    SOAK = "soak"
    """The canary is ACTIVE: start its soak."""
    COMMIT_FLEET = "commit-fleet"
    """The soak proved the canary: COMMIT to the waiting nodes."""
    SUCCEED = "succeed"
    FAIL = "fail"
    """Nobody switched: abort everywhere."""
    ROLL_BACK = "roll-back"
    """A node may have switched: roll back every node that may have."""
    END_ROLLBACK = "end-rollback"
    """Every node that switched answered its rollback."""


_TARGET = {
    Move.SOAK: S.SOAKING,
    Move.COMMIT_FLEET: S.COMMITTING,
    Move.SUCCEED: S.SUCCEEDED,
    Move.FAIL: S.FAILED,
    Move.ROLL_BACK: S.ROLLING_BACK,
}


@dataclass(frozen=True)
class Decision:
    """A move, the state it leads to, why, and what it settles about single nodes first."""

    move: Move
    target: DeploymentState | None = None
    reason: str | None = None
    node_phases: tuple[tuple[str, NodePhase, str], ...] = field(default=())
    """(node, phase, reason) to record before the move (failed by a timeout or a lost link)."""
    lost: tuple[tuple[str, str], ...] = field(default=())
    """(node, detail): an agent lost, its phase kept (what it had done)."""


STAY = Decision(Move.STAY)


def _decide(
    state: DeploymentState,
    move: Move,
    reason: str | None = None,
    *,
    node_phases: tuple[tuple[str, NodePhase, str], ...] = (),
    lost: tuple[tuple[str, str], ...] = (),
) -> Decision:
    """A decision whose move is checked against the declared transitions."""
    target = _TARGET.get(move)
    if target is not None:
        check_transition(state, target)
    return Decision(move, target, reason, node_phases, lost)


def _ending(
    state: DeploymentState, target: DeploymentState, move: Move, reason: str | None = None
) -> Decision:
    check_transition(state, target)
    return Decision(move, target, reason)


def advance(
    state: DeploymentState, nodes: Sequence[NodeFacts], *, canary: bool = False
) -> Decision:
    """After an acknowledgement (or a node settled): the next move, if any.

    ``nodes`` are the deployment's connected-at-start targets (OFFLINE rows
    are caught up later and never part of a decision). ``canary`` is the
    deployment's strategy.
    """
    if state == S.PREPARING:
        return _while_preparing(state, nodes, canary=canary)
    if state in (S.CANARY, S.COMMITTING):
        return _while_switching(state, nodes)
    if state == S.ROLLING_BACK:
        return _while_rolling_back(state, nodes)
    return STAY


def _while_preparing(
    state: DeploymentState, nodes: Sequence[NodeFacts], *, canary: bool
) -> Decision:
    phases = [n.phase for n in nodes]
    if P.PREPARE_FAILED in phases:
        return _decide(state, Move.FAIL, _reasons(nodes, P.PREPARE_FAILED))
    if all(p == P.PREPARED for p in phases):
        target = S.CANARY if canary and len(nodes) > 1 else S.COMMITTING
        return _ending(state, target, Move.SWITCH)
    return STAY


def _while_switching(state: DeploymentState, nodes: Sequence[NodeFacts]) -> Decision:
    phases = [n.phase for n in nodes]
    if P.COMMIT_FAILED in phases:
        return _decide(state, Move.ROLL_BACK, _reasons(nodes, P.COMMIT_FAILED))
    if state == S.CANARY and any(n.role == NodeRole.CANARY and n.phase == P.ACTIVE for n in nodes):
        return _decide(state, Move.SOAK)
    if state == S.COMMITTING and all(p == P.ACTIVE for p in phases):
        return _decide(state, Move.SUCCEED)
    return STAY


def _while_rolling_back(state: DeploymentState, nodes: Sequence[NodeFacts]) -> Decision:
    switched = [n.phase for n in nodes if n.phase in SWITCHED]  # the others are only aborted
    if not all(p in (P.ROLLED_BACK, P.ROLLBACK_FAILED) for p in switched):
        return STAY
    if P.ROLLBACK_FAILED in switched:
        reason = "rollback failed on " + _reasons(nodes, P.ROLLBACK_FAILED)
        return _ending(state, S.ROLLBACK_FAILED, Move.END_ROLLBACK, reason)
    return _ending(state, S.ROLLED_BACK, Move.END_ROLLBACK)


def expire(state: DeploymentState, nodes: Sequence[NodeFacts]) -> Decision:
    """The phase deadline passed: the soak ends, or every node still waited for fails."""
    if state == S.SOAKING:
        return after_soak(state, nodes)
    waiting = [n for n in nodes if n.phase in EXPECTED_ACKS]
    reason = f"{state} timed out waiting for: {_names([n.name for n in waiting])}"
    timed_out = tuple((n.name, _TIMED_OUT[n.phase], "timed out") for n in waiting)
    if state == S.PREPARING:
        return _decide(state, Move.FAIL, reason, node_phases=timed_out)
    if state == S.ROLLING_BACK:
        settled = [
            replace(n, phase=_TIMED_OUT[n.phase], reason="timed out")
            if n.phase in EXPECTED_ACKS
            else n
            for n in nodes
        ]
        ended = advance(state, settled)
        return Decision(ended.move, ended.target, ended.reason, node_phases=timed_out)
    return _decide(state, Move.ROLL_BACK, reason, node_phases=timed_out)


def after_soak(state: DeploymentState, nodes: Sequence[NodeFacts]) -> Decision:
    """The canary's soak is over: the fleet follows a healthy canary, if all are still here."""
    canary = next(n for n in nodes if n.role == NodeRole.CANARY)
    if not (canary.connected and canary.running_release):
        return _decide(state, Move.ROLL_BACK, f"canary {canary.name} unhealthy after its soak")
    gone = [n.name for n in nodes if n.phase == P.WAITING and not n.connected]
    if gone:  # the fleet must not follow the canary without them (P1)
        return _decide(state, Move.ROLL_BACK, f"not connected after the soak: {', '.join(gone)}")
    return _decide(state, Move.COMMIT_FLEET)


def disconnected(
    state: DeploymentState, node: NodeFacts, nodes: Sequence[NodeFacts], *, canary: bool = False
) -> Decision:
    """A target's agent was lost mid-deployment: a failure at once (P1), whatever its phase.

    Lost before COMMIT reached it: FAILED (nobody switches) or, once a canary
    switched, rolled back; lost after: the whole fleet rolls back. ``nodes``
    are all targets, ``node`` among them as it was before the loss.
    """
    if node.phase in _LOST_DURING:
        failed, during = _LOST_DURING[node.phase]
        detail = f"agent disconnected during {during}"
        settled = [
            replace(n, phase=failed, reason=detail) if n.name == node.name else n for n in nodes
        ]
        then = advance(state, settled, canary=canary)
        return Decision(
            then.move, then.target, then.reason, node_phases=((node.name, failed, detail),)
        )
    if state == S.PREPARING and node.phase == P.PREPARED:
        detail = "agent disconnected after PREPARED, before COMMIT"
        return _decide(state, Move.FAIL, f"{node.name}: {detail}", lost=((node.name, detail),))
    if state in (S.CANARY, S.SOAKING, S.COMMITTING) and node.phase in (P.WAITING, P.ACTIVE):
        switched = "" if node.phase == P.ACTIVE else "; it had not switched"
        detail = f"agent disconnected during {state}{switched}"
        return _decide(state, Move.ROLL_BACK, f"{node.name}: {detail}", lost=((node.name, detail),))
    return STAY


NAMES_SHOWN = 20
"""Nodes a deployment's reason names before it counts the rest (a 10,000-node
timeout named every node: 140 KB in every view of the deployment)."""


def _reasons(nodes: Sequence[NodeFacts], phase: NodePhase) -> str:
    return _capped([f"{n.name}: {n.reason or phase}" for n in nodes if n.phase == phase], "; ")


def _names(names: Sequence[str]) -> str:
    """``a, b, c``; past ``NAMES_SHOWN`` names, the rest as a count."""
    return _capped(names, ", ") if names else "none"


def _capped(items: Sequence[str], separator: str) -> str:
    """The first ``NAMES_SHOWN`` items joined, then how many more there are."""
    shown = separator.join(items[:NAMES_SHOWN])
    rest = len(items) - NAMES_SHOWN
    return shown if rest <= 0 else f"{shown}{separator}and {rest:,} more ({len(items):,} nodes)"
