"""Flags as the operator sees them: registry, values, changes with their acks, staleness."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from knightwatch.control.flags.model import DEFAULT_LIFETIMES, decode_value
from knightwatch.control.flags.registry import get_flag
from knightwatch.control.flags.values import change_acks
from knightwatch.store import Flag, FlagChange, FlagEvaluation, FlagValue, Node, ReleaseFlag
from knightwatch.vocabulary import FlagKind, FlagState, NodeStatus

__all__ = ["change_json", "flag_history", "flag_json", "list_flag_rows", "stale_flags"]


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _lifetime(flag: Flag, lifetimes: dict[FlagKind, timedelta | None]) -> timedelta | None:
    if flag.lifetime_days is not None:
        return timedelta(days=flag.lifetime_days)
    return lifetimes.get(FlagKind(flag.kind), DEFAULT_LIFETIMES[FlagKind(flag.kind)])


def flag_json(session: Session, flag: Flag, *, detail: bool = False) -> dict[str, Any]:
    """One flag: its meaning, lifecycle, values per scope (and, in detail, evaluations)."""
    values = session.scalars(
        select(FlagValue).where(FlagValue.flag_name == flag.name).order_by(FlagValue.scope)
    ).all()
    data: dict[str, Any] = {
        "name": flag.name,
        "kind": flag.kind,
        "type": flag.value_type,
        "description": flag.description,
        "default": decode_value(flag.default_value),
        "owner": flag.owner,
        "state": flag.state,
        "first_release": flag.first_release,
        "created_at": _when(flag.created_at),
        "created_by": flag.created_by,
        "retired_at": _when(flag.retired_at),
        "retired_by": flag.retired_by,
        "retire_reason": flag.retire_reason,
        "fingerprint": flag.fingerprint,
        "values": [
            {
                "scope": v.scope,
                "value": decode_value(v.value),
                "version": v.version,
                "set_at": _when(v.set_at),
                "set_by": v.set_by,
            }
            for v in values
        ],
    }
    if detail:
        data["evaluations"] = [
            {"node": node, "release": digest, "count": count, "last_at": _when(last)}
            for node, digest, count, last in session.execute(
                select(
                    FlagEvaluation.node_name,
                    FlagEvaluation.release_digest,
                    FlagEvaluation.count,
                    FlagEvaluation.last_at,
                )
                .where(FlagEvaluation.flag_name == flag.name)
                .order_by(FlagEvaluation.node_name)
            )
        ]
        data["declared_by"] = list(
            session.scalars(
                select(ReleaseFlag.release_digest).where(ReleaseFlag.flag_name == flag.name)
            )
        )
    return data


def list_flag_rows(session: Session) -> list[dict[str, Any]]:
    """Every flag, by name, with its values."""
    return [flag_json(session, flag) for flag in session.scalars(select(Flag).order_by(Flag.name))]


def change_json(session: Session, change: FlagChange) -> dict[str, Any]:
    """One recorded change, with who acknowledged it and who has not (value changes)."""
    acked, missing = change_acks(session, change) if change.version is not None else ([], [])
    return {
        "id": change.id,
        "flag": change.flag_name,
        "kind": change.kind,
        "at": _when(change.at),
        "actor": change.actor,
        "scope": change.scope,
        "old": None if change.old_value is None else json.loads(change.old_value),
        "new": None if change.new_value is None else json.loads(change.new_value),
        "reason": change.reason,
        "version": change.version,
        "targets": json.loads(change.targets or "[]"),
        "acknowledged": acked,
        "missing": missing,
    }


def flag_history(session: Session, name: str | None, limit: int = 200) -> list[dict[str, Any]]:
    """Recorded changes, newest first (of flag ``name``, or of every flag)."""
    statement = select(FlagChange).order_by(FlagChange.id.desc()).limit(limit)
    if name is not None:
        statement = statement.where(FlagChange.flag_name == get_flag(session, name).name)
    return [change_json(session, change) for change in session.scalars(statement)]


def stale_flags(
    session: Session,
    now: datetime,
    *,
    constant_days: int,
    lifetimes: dict[FlagKind, timedelta | None],
) -> list[dict[str, Any]]:
    """Active flags to clean up, each with every reason it is stale."""
    active_digests = {
        d
        for d in session.scalars(
            select(Node.active_digest).where(Node.status == NodeStatus.ENROLLED)
        )
        if d
    }
    declared = set(
        session.scalars(
            select(ReleaseFlag.flag_name).where(ReleaseFlag.release_digest.in_(active_digests))
        )
    )
    sums = session.execute(
        select(FlagEvaluation.flag_name, func.sum(FlagEvaluation.count)).group_by(
            FlagEvaluation.flag_name
        )
    )
    evaluated = {name: int(total or 0) for name, total in sums}
    scopes: dict[str, list[FlagValue]] = {}
    for value in session.scalars(select(FlagValue)):
        scopes.setdefault(value.flag_name, []).append(value)
    rows = []
    for flag in session.scalars(
        select(Flag).where(Flag.state == FlagState.ACTIVE).order_by(Flag.name)
    ):
        values = scopes.get(flag.name, [])
        reasons = _stale_reasons(flag, values, now, constant_days, lifetimes, declared, evaluated)
        if reasons:
            rows.append(
                {"name": flag.name, "kind": flag.kind, "owner": flag.owner, "reasons": reasons}
            )
    return rows


def _stale_reasons(
    flag: Flag,
    values: list[FlagValue],
    now: datetime,
    constant_days: int,
    lifetimes: dict[FlagKind, timedelta | None],
    declared: set[str],
    evaluated: dict[str, int],
) -> list[str]:
    reasons = []
    lifetime = _lifetime(flag, lifetimes)
    age = now - flag.created_at
    if lifetime is not None and age > lifetime:
        reasons.append(
            f"past its expected lifetime ({age.days} days old; "
            f"{flag.kind} flags live {lifetime.days})"
        )
    fleet = next((v for v in values if v.scope == "fleet"), None)
    only_fleet = fleet is not None and len(values) == 1
    if fleet is not None and only_fleet and now - fleet.set_at > timedelta(days=constant_days):
        reasons.append(
            f"{decode_value(fleet.value)!r} everywhere for {(now - fleet.set_at).days} days"
        )
    if flag.name not in declared:
        reasons.append("declared by no release running on the fleet")
    if not evaluated.get(flag.name):
        reasons.append("never evaluated")
    return reasons
