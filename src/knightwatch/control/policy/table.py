"""The one table of the safety policy: for each action, the checks that apply, in order.

A new precondition is a new :class:`~knightwatch.control.policy.model.Check`
in a row; a new action (a flag change, a configuration change) is a new row.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.orm import Session

from knightwatch.control.policy.checks import (
    NodesNotHalted,
    NoDrift,
    NoRunningDeployment,
    NoUnacknowledgedCritical,
    ReleaseNotAlreadyRetired,
    ReleaseNotInUse,
    ReleaseNotRetired,
    TargetsConnected,
)
from knightwatch.control.policy.flag_checks import (
    FlagNotRetired,
    NodesConnected,
    NodesDeclareFlag,
    ScopeConverged,
)
from knightwatch.control.policy.model import Action, Check, Proposal
from knightwatch.errors import InvalidInputError, PolicyRefusedError, Refusal

__all__ = ["POLICY", "enforce", "evaluate", "parse_action"]

_CHANGES_RELEASE = (
    NoRunningDeployment(),
    ReleaseNotRetired(),
    NodesNotHalted(),
    TargetsConnected(),
)
_LOOKED_AT = (NoUnacknowledgedCritical(), NoDrift())  # someone looked before it is changed

POLICY: Mapping[Action, tuple[Check, ...]] = {
    Action.DEPLOY: (*_CHANGES_RELEASE, *_LOOKED_AT),
    Action.ROLLBACK: (*_CHANGES_RELEASE, *_LOOKED_AT),
    Action.RECONCILE: _CHANGES_RELEASE,  # the repair of drift: never refused for the drift
    Action.CATCHUP: _CHANGES_RELEASE,
    Action.RETIRE: (ReleaseNotAlreadyRetired(), ReleaseNotInUse()),
    Action.REARM: (),  # stopping never needs approval; change control adds its approval here
    Action.FLAG_SET: (
        FlagNotRetired(),
        NoRunningDeployment(),
        NodesConnected(),
        NodesDeclareFlag(),
        ScopeConverged(),
        NodesNotHalted(),
        NoDrift(in_scope=True),
        NoUnacknowledgedCritical(),
    ),
    Action.FLAG_SAFE: (),  # a kill flag to its safe side: never blocked
}
"""For each action, the checks that apply, in the order their refusals are listed."""


def evaluate(session: Session, proposal: Proposal) -> list[Refusal]:
    """Every refusal of every check that applies to ``proposal``'s action (empty: allowed)."""
    return [r for check in POLICY[proposal.action] for r in check.refusals(session, proposal)]


def enforce(session: Session, proposal: Proposal) -> None:
    """Raise :class:`PolicyRefusedError` carrying every refusal, if there is any."""
    if refusals := evaluate(session, proposal):
        raise PolicyRefusedError(proposal.action.value, refusals)


def parse_action(text: str) -> Action:
    """The operator action ``text`` names; an unknown one is refused listing the known ones.

    ``catchup`` is the control plane's own action, not one an operator asks for;
    ``flag-safe`` is what ``flag-set`` becomes for a kill flag going to its safe side.
    """
    internal = (Action.CATCHUP, Action.FLAG_SAFE)
    operator_actions = {a.value: a for a in Action if a not in internal}
    if text not in operator_actions:
        known = ", ".join(operator_actions)
        raise InvalidInputError(
            f"unknown action {text!r}: the known actions are {known}",
            hint="for example: knightwatch check deploy RELEASE",
        )
    return operator_actions[text]
