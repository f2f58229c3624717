"""Change requests: their kinds, their states, the declared moves between states, checklists.

A change request is the only way a deploy, rollback, reconcile, retirement,
re-arm or flag change happens. It is proposed with a frozen risk assessment,
approved by someone other than its author (as many approvals as its risk
needs), its checklist ticked, then executed through the safety policy. Every
move is declared below with the hazard it exists to prevent (shared/STYLE.md,
item 5); anything else is a bug and raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from knightwatch.control.states import IllegalTransitionError

__all__ = [
    "CHECKLISTS",
    "EMERGENCY_KINDS",
    "ChangeKind",
    "ChangeState",
    "Risk",
    "check_change_transition",
]


class ChangeKind(StrEnum):
    """What a change request would do."""

    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    RECONCILE = "reconcile"
    RETIRE = "retire"
    REARM = "rearm"
    FLAG_SET = "flag-set"


class ChangeState(StrEnum):
    """Where a change request is."""

    PROPOSED = "PROPOSED"
    """Waiting for approvals (or for its checklist, or for a freeze to end)."""
    APPROVED = "APPROVED"
    """Approved by enough people other than its author, for this exact assessment."""
    EXECUTED = "EXECUTED"
    """Carried out; ``result`` names what it started (a deployment, a retirement …)."""
    FAILED = "FAILED"
    """Its execution was refused or failed; nothing of it was done."""
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset(
    {ChangeState.EXECUTED, ChangeState.FAILED, ChangeState.REJECTED, ChangeState.CANCELLED}
)


class Risk(StrEnum):
    """How risky a change is, by the rules in control/changes/risk.py."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


EMERGENCY_KINDS = frozenset({ChangeKind.ROLLBACK, ChangeKind.RECONCILE, ChangeKind.REARM})
"""What one person may execute alone in an emergency: moves back to a known state."""

CHECKLISTS: dict[ChangeKind, tuple[str, ...]] = {
    ChangeKind.DEPLOY: (
        "pre-open audit clean",
        "rollback target verified on every node",
        "downstream components reviewed",
    ),
    ChangeKind.ROLLBACK: ("rollback target verified on every node",),
    ChangeKind.RECONCILE: ("drift investigated and understood",),
    ChangeKind.RETIRE: ("no node or plan still needs this release",),
    ChangeKind.REARM: ("cause of the halt understood",),
    ChangeKind.FLAG_SET: ("every node in scope runs code that reads this flag",),
}
"""Items someone ticks, by name, before a change executes (when the policy asks for them)."""


@dataclass(frozen=True)
class ChangeTransition:
    """A permitted move of a change request, and the hazard its guard prevents."""

    sources: frozenset[ChangeState]
    target: ChangeState
    hazard: str


S = ChangeState
TRANSITIONS: tuple[ChangeTransition, ...] = (
    ChangeTransition(
        frozenset({S.PROPOSED}),
        S.APPROVED,
        "a change runs on one person's word (Knight: no second technician reviewed the deploy)",
    ),
    ChangeTransition(
        frozenset({S.APPROVED}),
        S.PROPOSED,
        "an approval given for one fleet is used on another: the assessment changed, "
        "so the approvals are void",
    ),
    ChangeTransition(
        frozenset({S.APPROVED}),
        S.EXECUTED,
        "an approved change is carried out without the safety policy's checks",
    ),
    ChangeTransition(
        frozenset({S.PROPOSED}),
        S.EXECUTED,
        "an emergency (or a change the policy lets run without approval) leaves no record",
    ),
    ChangeTransition(
        frozenset({S.PROPOSED, S.APPROVED}),
        S.FAILED,
        "a refused execution is reported as done",
    ),
    ChangeTransition(
        frozenset({S.PROPOSED, S.APPROVED}),
        S.REJECTED,
        "a rejected change is executed anyway",
    ),
    ChangeTransition(
        frozenset({S.PROPOSED, S.APPROVED}),
        S.CANCELLED,
        "a withdrawn change is executed anyway",
    ),
)


def check_change_transition(source: ChangeState, target: ChangeState) -> ChangeTransition:
    """Return the declared move from ``source`` to ``target``, or raise."""
    for transition in TRANSITIONS:
        if source in transition.sources and transition.target == target:
            return transition
    raise IllegalTransitionError(f"a change request cannot move from {source} to {target}")
