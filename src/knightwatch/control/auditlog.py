"""The audit log (P7): every state change, hash-chained, appended in the transaction that makes it.

Each entry holds a sequence number (1, 2, 3 … without gaps), the time, the
actor, the action (``flag.set``, ``halt.issued`` …), the object it concerns,
a JSON payload, the previous entry's hash and its own::

    hash = SHA-256(canonical JSON of {seq, at, actor, action, object, payload, prev})

An entry is appended in the same transaction as the change it records, so
there is no change without its entry and no entry without its change.
Appends are serialised (SQLite: every writing session holds the write lock;
PostgreSQL: a transaction-scoped advisory lock), and ``seq`` is the primary
key, so two control planes appending at once can never fork the chain.

:func:`verify_chain` recomputes every hash and names the first broken link;
signed checkpoints kept outside the database (``server/checkpoints.py``)
catch a rewrite or truncation of the whole chain.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from knightwatch.canonical import canonical_json, sha256_hex
from knightwatch.store import AuditLogEntry

__all__ = [
    "GENESIS",
    "ChainReport",
    "append",
    "entry_hash",
    "entry_json",
    "head",
    "iter_entries",
    "verify_chain",
]

GENESIS = "0" * 64
"""The ``prev_hash`` of entry 1."""
# Per schema, as the migration lock: knightwatch installations (or test schemas) sharing
# one PostgreSQL database never wait for each other.
_PG_LOCK = "SELECT pg_advisory_xact_lock(hashtext('knightwatch.audit_log:' || current_schema()))"
_BATCH = 1000
MAX_FIELD = 255


def _moment(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def entry_hash(
    seq: int, at: datetime, actor: str, action: str, obj: str, payload: str, prev: str
) -> str:
    """The hash of one entry: SHA-256 over the canonical JSON of its fields and ``prev``."""
    document = {
        "seq": seq,
        "at": _moment(at),
        "actor": actor,
        "action": action,
        "object": obj,
        "payload": json.loads(payload),
        "prev": prev,
    }
    return sha256_hex(canonical_json(document))


def head(session: Session) -> AuditLogEntry | None:
    """The newest entry (None: the log is empty)."""
    statement = select(AuditLogEntry).order_by(AuditLogEntry.seq.desc()).limit(1)
    return session.scalars(statement).first()


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    obj: str,
    at: datetime,
    payload: Mapping[str, Any] | None = None,
) -> AuditLogEntry:
    """Append one entry to the chain, in ``session``'s transaction (flushed)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(_PG_LOCK))
    last = head(session)
    seq = 1 if last is None else last.seq + 1
    prev = GENESIS if last is None else last.hash
    body = canonical_json(dict(payload or {})).decode("utf-8")
    at = at.astimezone(UTC)
    actor, action, obj = actor[:MAX_FIELD], action[:64], obj[:MAX_FIELD]
    entry = AuditLogEntry(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        object=obj,
        payload=body,
        prev_hash=prev,
        hash=entry_hash(seq, at, actor, action, obj, body, prev),
    )
    session.add(entry)
    session.flush()
    return entry


def iter_entries(session: Session, *, since_seq: int = 0) -> Iterator[AuditLogEntry]:
    """Every entry after ``since_seq``, in order, read in batches."""
    after = since_seq
    while True:
        batch = session.scalars(
            select(AuditLogEntry)
            .where(AuditLogEntry.seq > after)
            .order_by(AuditLogEntry.seq)
            .limit(_BATCH)
        ).all()
        if not batch:
            return
        yield from batch
        after = batch[-1].seq


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify_chain` found."""

    entries: int
    head_seq: int
    head_hash: str
    broken_seq: int | None = None
    problem: str | None = None
    hashes: Mapping[int, str] | None = None
    """seq → stored hash of every entry (for checking checkpoints)."""

    @property
    def ok(self) -> bool:
        """True when every link holds."""
        return self.problem is None


def verify_chain(session: Session) -> ChainReport:
    """Recompute the chain from entry 1; name the first link that does not hold."""
    prev, expected, count = GENESIS, 1, 0
    hashes: dict[int, str] = {}
    for entry in iter_entries(session):
        problem = _link_problem(entry, expected, prev)
        if problem is not None:
            return ChainReport(count, expected - 1, prev, entry.seq, problem, hashes)
        hashes[entry.seq] = entry.hash
        prev, expected, count = entry.hash, expected + 1, count + 1
    return ChainReport(count, expected - 1, prev, hashes=hashes)


def _link_problem(entry: AuditLogEntry, expected: int, prev: str) -> str | None:
    if entry.seq != expected:
        return f"entry {expected} is missing (the next one is {entry.seq})"
    if entry.prev_hash != prev:
        return f"entry {entry.seq} does not follow entry {entry.seq - 1} (its prev_hash differs)"
    try:
        recomputed = entry_hash(
            entry.seq, entry.at, entry.actor, entry.action, entry.object, entry.payload, prev
        )
    except ValueError:
        return f"entry {entry.seq} has a payload that is not JSON"
    if recomputed != entry.hash:
        return f"entry {entry.seq} was changed after it was written (its hash does not match)"
    return None


def entry_json(entry: AuditLogEntry) -> dict[str, Any]:
    """One entry as plain JSON (the shape of ``audit-log show`` and ``export``)."""
    try:
        payload: Any = json.loads(entry.payload)
    except ValueError:
        payload = entry.payload
    return {
        "seq": entry.seq,
        "at": _moment(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "object": entry.object,
        "payload": payload,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }
