"""Operator API for the audit log: read it, verify the chain and the checkpoints, checkpoint now."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from knightwatch.api.auth import Operator
from knightwatch.api.plane import Plane
from knightwatch.control.auditlog import entry_json, verify_chain
from knightwatch.server.checkpoints import checkpoint_problems
from knightwatch.store import AuditLogEntry

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/audit-log")
MAX_ENTRIES = 10_000


@router.get("")
def entries(
    plane: Plane,
    _who: Operator,
    after: Annotated[int, Query(ge=0, le=2**62, description="only entries after this seq")] = 0,
    since: Annotated[
        datetime | None, Query(description="only entries at or after (ISO 8601)")
    ] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ENTRIES)] = 1000,
) -> list[dict[str, Any]]:
    """Entries in order of their sequence numbers (filters combine)."""
    statement = select(AuditLogEntry).where(AuditLogEntry.seq > after)
    if since is not None:
        statement = statement.where(AuditLogEntry.at >= since)
    if action is not None:
        statement = statement.where(AuditLogEntry.action == action)
    statement = statement.order_by(AuditLogEntry.seq).limit(limit)
    with plane.db.reading() as session:
        return [entry_json(entry) for entry in session.scalars(statement)]


@router.get("/verify")
def verify(plane: Plane, _who: Operator) -> dict[str, Any]:
    """Recompute the chain; check every signed checkpoint against it."""
    with plane.db.reading() as session:
        report = verify_chain(session)
    problems: list[str] = []
    checked = 0
    location = None
    if plane.checkpoints is not None:
        location = str(plane.checkpoints.path)
        found, unreadable = plane.checkpoints.read()
        problems = unreadable + checkpoint_problems(report, found, plane.checkpoints.public_key)
        checked = len(found)
    ok = report.ok and not problems
    return {
        "ok": ok,
        "entries": report.entries,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "broken_seq": report.broken_seq,
        "problem": report.problem,
        "checkpoints": {"file": location, "checked": checked, "problems": problems},
    }


@router.post("/checkpoint", status_code=201)
def checkpoint(plane: Plane, _who: Operator) -> dict[str, Any]:
    """Sign and keep the log's head now."""
    written = plane.checkpoint(force=True)
    return {} if written is None else dict(written.__dict__)
