"""The safety policy: one table says which checks refuse which action, with every reason.

Each precondition of an action is a :class:`Check` that returns every
:class:`~knightwatch.errors.Refusal` it finds (the nodes, alerts or releases
concerned, and what to do). :data:`POLICY` lists, per :class:`Action`, the
checks that apply; :func:`evaluate` returns all refusals of a
:class:`Proposal`, :func:`enforce` raises
:class:`~knightwatch.errors.PolicyRefusedError` carrying them, and
:func:`dry_run` answers ``knightwatch check ACTION`` from the same table.
"""

from __future__ import annotations

from knightwatch.control.policy.model import Action, Check, Proposal
from knightwatch.control.policy.proposals import (
    deploy_proposal,
    dry_run,
    reconcile_target,
    rollback_target,
)
from knightwatch.control.policy.table import POLICY, enforce, evaluate, parse_action

__all__ = [
    "POLICY",
    "Action",
    "Check",
    "Proposal",
    "deploy_proposal",
    "dry_run",
    "enforce",
    "evaluate",
    "parse_action",
    "reconcile_target",
    "rollback_target",
]
