"""Halt rows of the store, read one way by the kill switch's writes, ingestion and views."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.store import Halt, HaltNode

__all__ = ["active_halt_rows", "detail_with", "halt_detail", "last_halt_id"]


def active_halt_rows(
    session: Session, names: set[str] | None, *, halt_id: int | None = None
) -> Iterable[tuple[HaltNode, Halt]]:
    """(row, halt) of halts not lifted whose node is not re-armed yet."""
    statement = (
        select(HaltNode, Halt)
        .join(Halt, Halt.id == HaltNode.halt_id)
        .where(Halt.lifted_at.is_(None), HaltNode.rearmed_at.is_(None))
        .order_by(Halt.id)
    )
    if names is not None:
        statement = statement.where(HaltNode.node_name.in_(sorted(names)))
    if halt_id is not None:
        statement = statement.where(HaltNode.halt_id == halt_id)
    return [(row, halt) for row, halt in session.execute(statement)]


def last_halt_id(session: Session, node: str) -> int | None:
    """The newest halt that named ``node`` (lifted or not)."""
    statement = (
        select(HaltNode.halt_id)
        .where(HaltNode.node_name == node)
        .order_by(HaltNode.halt_id.desc())
        .limit(1)
    )
    return session.scalars(statement).first()


def halt_detail(row: HaltNode) -> dict[str, Any]:
    """The row's detail: JSON (pids, the agent's detail, the re-arm), or plain text."""
    if not row.detail:
        return {}
    try:
        data = json.loads(row.detail)
    except ValueError:
        return {"detail": row.detail}
    return data if isinstance(data, dict) else {"detail": row.detail}


def detail_with(row: HaltNode, **changes: Any) -> str:
    """The row's detail JSON with ``changes`` merged in."""
    return json.dumps({**halt_detail(row), **changes}, sort_keys=True)
