"""What agents report of flags: the version flags.json holds, and the evaluations counted.

A retired flag that is still evaluated somewhere is dead code running: it
raises a critical alert naming the node and the release.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.control import alerts
from knightwatch.protocol import NodeState
from knightwatch.store import Flag, FlagEvaluation, Node, Release
from knightwatch.vocabulary import FlagState, Severity

__all__ = ["RETIRED_FLAG_RULE", "ingest_flag_state"]

RETIRED_FLAG_RULE = "flag-retired-evaluated"


def ingest_flag_state(session: Session, node: Node, state: NodeState, now: datetime) -> bool:
    """Store the node's flag version and evaluation counts; True if its version moved."""
    moved = state.flags_version is not None and state.flags_version != node.flags_version
    if state.flags_version is not None:
        node.flags_version = state.flags_version
    if state.flag_evaluations and node.active_digest is not None:
        grown = _record_counts(session, node, node.active_digest, state.flag_evaluations, now)
        _alert_retired(session, node, node.active_digest, grown, now)
    return moved


def _record_counts(
    session: Session, node: Node, digest: str, counts: dict[str, int], now: datetime
) -> list[str]:
    """Store cumulative counts; return the names whose count grew."""
    rows = {
        row.flag_name: row
        for row in session.scalars(
            select(FlagEvaluation).where(
                FlagEvaluation.node_name == node.name, FlagEvaluation.release_digest == digest
            )
        )
    }
    grown = []
    for name, count in counts.items():
        row = rows.get(name)
        if row is None:
            session.add(
                FlagEvaluation(
                    node_name=node.name,
                    release_digest=digest,
                    flag_name=name,
                    count=count,
                    first_at=now,
                    last_at=now,
                )
            )
            grown.append(name)
        elif count != row.count:
            row.count, row.last_at = count, now
            grown.append(name)
    return grown


def _alert_retired(
    session: Session, node: Node, digest: str, names: list[str], now: datetime
) -> None:
    if not names:
        return
    retired = session.scalars(
        select(Flag).where(Flag.name.in_(names), Flag.state == FlagState.RETIRED)
    ).all()
    if not retired:
        return
    release = session.get(Release, digest)
    running = release.release_id if release is not None else digest[:12]
    for flag in retired:
        alerts.fire(
            session,
            rule=f"{RETIRED_FLAG_RULE}:{flag.name}",
            node=node.name,
            severity=Severity.CRITICAL,
            summary=f"retired flag {flag.name} is still evaluated on {node.name} by {running}",
            detail=f"flag {flag.name} was retired ({flag.retire_reason}); release {running} "
            f"on {node.name} still reads it: dead code is running. "
            "Deploy a release that no longer reads it.",
            now=now,
        )
