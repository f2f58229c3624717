"""Flag values per scope: set only through the safety policy, resolved per node, acknowledged.

A value is set in a scope (``fleet``, ``group:NAME``, ``node:NAME``); a node
takes the value of the narrowest scope that has one, else the release's safe
default. Every change raises the fleet's flag-state version; a node has
acknowledged a change once its agent reports flags.json holds that version.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.control.flags.model import (
    FlagScalar,
    Scope,
    decode_value,
    encode_value,
    validate_value,
)
from knightwatch.control.flags.registry import get_flag, record_change
from knightwatch.control.policy.model import Action, Proposal
from knightwatch.control.policy.table import enforce, evaluate
from knightwatch.errors import InvalidInputError, Refusal
from knightwatch.protocol import FlagSetting, FlagValues
from knightwatch.store import Flag, FlagChange, FlagValue, Node
from knightwatch.store.queries import get_fleet
from knightwatch.vocabulary import FlagChangeKind, FlagKind, FlagState, FlagType, NodeStatus

__all__ = [
    "FlagChangePlan",
    "change_acks",
    "dry_run_flag_set",
    "flag_set_proposal",
    "nodes_in_scope",
    "set_flag_value",
    "values_for_node",
    "values_for_nodes",
]


@dataclass(frozen=True)
class FlagChangePlan:
    """A committed value change and what to send: each target node's new values."""

    change_id: int
    version: int
    messages: list[tuple[str, FlagValues]]


def nodes_in_scope(session: Session, scope: Scope) -> list[Node]:
    """The nodes ``scope`` covers, by name: enrolled ones, and drained ones (they still run)."""
    running = (NodeStatus.ENROLLED, NodeStatus.DRAINED)
    statement = select(Node).where(Node.status.in_(running)).order_by(Node.name)
    if scope.kind == "group":
        statement = statement.where(Node.group_name == scope.name)
    elif scope.kind == "node":
        statement = statement.where(Node.name == scope.name)
    return list(session.scalars(statement))


def flag_set_proposal(
    session: Session, name: str, scope_text: str, value: object | None
) -> tuple[Proposal, Flag, Scope, FlagScalar | None]:
    """The proposal to set (``value``) or unset (None) flag ``name`` in a scope.

    Switching a ``kill`` flag to its safe side (its declared default) is the
    ``flag-safe`` action, which nothing blocks.
    """
    flag = get_flag(session, name)
    scope = Scope.parse(scope_text)
    typed = (
        None if value is None else validate_value(value, FlagType(flag.value_type), where="value")
    )
    nodes = nodes_in_scope(session, scope)
    if not nodes:
        raise InvalidInputError(
            f"no enrolled node is in scope {scope}",
            hint="knightwatch status lists nodes and their groups",
        )
    safe = typed is not None and typed == decode_value(flag.default_value)
    action = Action.FLAG_SAFE if flag.kind == FlagKind.KILL and safe else Action.FLAG_SET
    return Proposal(action, nodes=tuple(nodes), flag=flag), flag, scope, typed


def set_flag_value(
    session: Session,
    name: str,
    scope_text: str,
    value: object | None,
    *,
    actor: str,
    reason: str,
    at: datetime,
) -> FlagChangePlan:
    """Set (or with ``value`` None, unset) a flag in a scope, if the policy allows it.

    The fleet row is locked first (PostgreSQL; SQLite sessions hold the write
    lock anyway), so the checks and the change see one state: no deployment
    starts, and no other flag change takes a version, in between.
    """
    fleet = get_fleet(session, for_update=True, now=at)
    proposal, flag, scope, typed = flag_set_proposal(session, name, scope_text, value)
    enforce(session, proposal)
    fleet.flags_version += 1
    version = fleet.flags_version
    row = session.get(FlagValue, (flag.name, str(scope)))
    old = row.value if row is not None else None
    if typed is None:
        if row is not None:
            session.delete(row)
    elif row is None:
        session.add(
            FlagValue(
                flag_name=flag.name,
                scope=str(scope),
                value=encode_value(typed),
                version=version,
                set_at=at,
                set_by=actor[:255],
            )
        )
    else:
        row.value, row.version, row.set_at, row.set_by = (
            encode_value(typed),
            version,
            at,
            actor[:255],
        )
    session.flush()
    change = record_change(
        session,
        flag.name,
        FlagChangeKind.SET if typed is not None else FlagChangeKind.UNSET,
        at=at,
        actor=actor,
        reason=reason,
        scope=str(scope),
        old=old,
        new=None if typed is None else encode_value(typed),
        version=version,
        targets=proposal.node_names,
    )
    messages = list(values_for_nodes(session, proposal.nodes).items())
    return FlagChangePlan(change.id, version, messages)


def dry_run_flag_set(
    session: Session, name: str, scope_text: str, value: object | None
) -> list[Refusal]:
    """What would refuse setting the flag now (empty: nothing would)."""
    proposal, *_ = flag_set_proposal(session, name, scope_text, value)
    return evaluate(session, proposal)


def values_for_node(session: Session, node: Node) -> FlagValues:
    """Every value in force for ``node`` (narrowest scope wins), at the fleet's version."""
    return values_for_nodes(session, [node])[node.name]


def values_for_nodes(session: Session, nodes: Sequence[Node]) -> dict[str, FlagValues]:
    """:func:`values_for_node` for each of ``nodes``, from one read of every value set.

    The values set are few (one per flag and scope given a value), so all of them are
    read once and each node picks its own, however many nodes there are.
    """
    statement = (
        select(FlagValue)
        .join(Flag, Flag.name == FlagValue.flag_name)
        .where(Flag.state == FlagState.ACTIVE)
        .order_by(FlagValue.flag_name)
    )
    rows = list(session.scalars(statement))
    version = get_fleet(session).flags_version
    return {node.name: FlagValues(version=version, values=_in_force(rows, node)) for node in nodes}


def _in_force(rows: Sequence[FlagValue], node: Node) -> dict[str, FlagSetting]:
    """The narrowest of ``rows`` that apply to ``node``, per flag."""
    rank = {"fleet": 0, f"group:{node.group_name}": 1, f"node:{node.name}": 2}
    chosen: dict[str, FlagValue] = {}
    for row in rows:
        if row.scope not in rank:
            continue
        held = chosen.get(row.flag_name)
        if held is None or rank[row.scope] > rank[held.scope]:
            chosen[row.flag_name] = row
    return {
        name: FlagSetting(value=decode_value(row.value), source=row.scope)
        for name, row in chosen.items()
    }


def change_acks(session: Session, change: FlagChange) -> tuple[list[str], list[str]]:
    """The target nodes that acknowledged ``change``, and those that have not (chase these)."""
    targets: list[str] = json.loads(change.targets or "[]")
    version = change.version or 0
    acked = {
        node.name
        for node in session.scalars(select(Node).where(Node.name.in_(targets)))
        if node.flags_version is not None and node.flags_version >= version
    }
    return sorted(acked), sorted(set(targets) - acked)
