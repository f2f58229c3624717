"""Deployment states and the transitions between them, each with its hazard.

The orchestrator may only move a deployment along a declared transition;
every declaration names the failure it exists to prevent, so the state
machine reads as the safety case of promise P1 (all or nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

from knightwatch.errors import KnightwatchError
from knightwatch.vocabulary import DeploymentState

__all__ = ["TRANSITIONS", "IllegalTransitionError", "Transition", "check_transition"]


@dataclass(frozen=True)
class Transition:
    """A permitted move of a deployment, and the hazard its guard prevents."""

    sources: frozenset[DeploymentState]
    target: DeploymentState
    hazard: str


S = DeploymentState
TRANSITIONS: tuple[Transition, ...] = (
    Transition(
        frozenset({S.PREPARING}),
        S.COMMITTING,
        "a node switches before every target verified the release (Knight: 7 of 8)",
    ),
    Transition(
        frozenset({S.PREPARING}),
        S.CANARY,
        "the canary switches before every target verified the release",
    ),
    Transition(
        frozenset({S.PREPARING}),
        S.FAILED,
        "a partly staged release is left half-deployed instead of abandoned everywhere",
    ),
    Transition(
        frozenset({S.CANARY}), S.SOAKING, "the fleet follows a canary that never became healthy"
    ),
    Transition(
        frozenset({S.SOAKING}),
        S.COMMITTING,
        "the fleet follows a canary before its soak time proved it",
    ),
    Transition(
        frozenset({S.CANARY, S.SOAKING, S.COMMITTING}),
        S.ROLLING_BACK,
        "a failure after the switch leaves a split fleet",
    ),
    Transition(
        frozenset({S.COMMITTING}),
        S.SUCCEEDED,
        "success is declared before every node is ACTIVE on the release",
    ),
    Transition(
        frozenset({S.ROLLING_BACK}),
        S.ROLLED_BACK,
        "rollback is declared before every node is back on its previous release",
    ),
    Transition(
        frozenset({S.ROLLING_BACK}),
        S.ROLLBACK_FAILED,
        "a node that could not roll back is hidden instead of named",
    ),
)


class IllegalTransitionError(KnightwatchError):
    """The orchestrator tried a move the state machine does not declare (a bug)."""


def check_transition(source: DeploymentState, target: DeploymentState) -> Transition:
    """Return the declared transition from ``source`` to ``target``, or raise."""
    for transition in TRANSITIONS:
        if source in transition.sources and transition.target == target:
            return transition
    raise IllegalTransitionError(f"deployment cannot move from {source} to {target}")
