"""What the safety policy reasons about: an action, the proposal to take it, and a check."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from sqlalchemy.orm import Session

from knightwatch.errors import Refusal
from knightwatch.store import Flag, Node, Release

__all__ = ["Action", "Check", "Proposal"]


class Action(StrEnum):
    """An operator action (or the control plane's own catch-up) the policy can refuse."""

    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    RECONCILE = "reconcile"
    CATCHUP = "catchup"
    RETIRE = "retire"
    REARM = "rearm"
    FLAG_SET = "flag-set"
    FLAG_SAFE = "flag-safe"
    """Switching a ``kill`` flag to its safe side (its declared default)."""


@dataclass(frozen=True)
class Proposal:
    """An action about to be taken, with what it concerns: a release or a flag, the nodes."""

    action: Action
    release: Release | None = None
    nodes: tuple[Node, ...] = ()
    flag: Flag | None = None

    @property
    def node_names(self) -> list[str]:
        """The selected nodes' names, sorted."""
        return sorted(n.name for n in self.nodes)


class Check:
    """One precondition: finds every reason it refuses a proposal (none when it holds).

    A subclass names itself (``name``, shown to users), says in its
    docstring which hazard it prevents, and implements :meth:`find`.
    """

    name: ClassVar[str]

    def refusals(self, session: Session, proposal: Proposal) -> list[Refusal]:
        """Every refusal this check finds for ``proposal`` (empty: it holds)."""
        return list(self.find(session, proposal))

    def find(self, session: Session, proposal: Proposal) -> Iterator[Refusal]:
        """Yield each refusal; a subclass implements it."""
        raise NotImplementedError

    def refuse(self, reason: str, subjects: list[str], hint: str | None = None) -> Refusal:
        """A refusal by this check."""
        return Refusal(check=self.name, reason=reason, subjects=tuple(subjects), hint=hint)
