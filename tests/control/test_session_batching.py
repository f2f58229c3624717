"""Session changes (connects, disconnects) share the report batcher's transactions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from knightwatch.server.report_batch import ReportBatcher, SessionChange
from knightwatch.store import Database, Node

COUNT = 60


def _now() -> datetime:
    return datetime.now(UTC)


def mark_connected(name: str) -> Callable[[Session], bool]:
    """A change that marks node ``name`` connected (and asks for no catch-up)."""

    def record(session: Session) -> bool:
        node = session.get(Node, name)
        assert node is not None
        node.connected = True
        return False

    return record


def test_changes_that_arrive_together_are_recorded_in_few_transactions(db: Database) -> None:
    """Sixty connects queued at once: all recorded, in far fewer batches than changes."""
    with db.session() as session:
        for i in range(COUNT):
            session.add(Node(name=f"n{i:03d}", status="enrolled", created_at=_now()))
    after: list[str] = []

    def connect(name: str) -> SessionChange:
        return SessionChange(mark_connected(name), after=lambda: after.append(name))

    async def run(batcher: ReportBatcher) -> None:
        await asyncio.gather(*(batcher.record(connect(f"n{i:03d}")) for i in range(COUNT)))

    with ThreadPoolExecutor(max_workers=1) as worker:
        batcher = ReportBatcher(db, worker, _now)
        asyncio.run(run(batcher))
    with db.session() as session:
        assert all(session.scalars(select(Node.connected)))
    assert sorted(after) == [f"n{i:03d}" for i in range(COUNT)]
    assert batcher.batches < COUNT / 2


def test_a_failing_change_fails_alone(db: Database) -> None:
    """One change that raises is rolled back to its savepoint; its caller hears; others stand."""
    with db.session() as session:
        session.add(Node(name="good", status="enrolled", created_at=_now()))

    def bad(session: Session) -> bool:
        session.add(Node(name="bad", status="enrolled", created_at=_now()))
        session.flush()
        raise RuntimeError("refused")

    async def run(batcher: ReportBatcher) -> list[BaseException | None]:
        return await asyncio.gather(
            batcher.record(SessionChange(bad)),
            batcher.record(SessionChange(mark_connected("good"))),
            return_exceptions=True,
        )

    with ThreadPoolExecutor(max_workers=1) as worker:
        outcomes = asyncio.run(run(ReportBatcher(db, worker, _now)))
    assert isinstance(outcomes[0], RuntimeError) and outcomes[1] is None
    with db.session() as session:
        assert session.get(Node, "bad") is None
        good_node = session.get(Node, "good")
        assert good_node is not None and good_node.connected


def test_a_clean_batch_takes_no_savepoint_and_a_commit_failure_is_retried_alone(
    db: Database,
) -> None:
    """A batch stores without savepoints; when its commit fails, each item is stored alone.

    The bad change's duplicate row only fails when the batch is flushed, after
    every ``record`` returned: the batch is then stored again, one savepoint
    per change, so the good changes stand and only the bad one's caller hears.
    """
    with db.session() as session:
        for name in ("dup", "a", "b"):
            session.add(Node(name=name, status="enrolled", created_at=_now()))
    savepoints: list[str] = []
    event.listen(db.engine, "savepoint", lambda _conn, name: savepoints.append(name))

    def connect(name: str) -> SessionChange:
        return SessionChange(mark_connected(name), node=name)

    def duplicate(session: Session) -> bool:
        session.add(Node(name="dup", status="enrolled", created_at=_now()))
        return False

    async def run(batcher: ReportBatcher, changes: list[SessionChange]) -> list[object]:
        return await asyncio.gather(*(batcher.record(c) for c in changes), return_exceptions=True)

    with ThreadPoolExecutor(max_workers=1) as worker:
        asyncio.run(run(ReportBatcher(db, worker, _now), [connect("a")]))
        assert savepoints == []
        outcomes = asyncio.run(
            run(ReportBatcher(db, worker, _now), [connect("b"), SessionChange(duplicate)])
        )
    assert outcomes[0] is None and isinstance(outcomes[1], Exception)
    assert savepoints, "the failed batch was not stored again item by item"
    with db.session() as session:
        assert session.get(Node, "a").connected  # type: ignore[union-attr]
        assert session.get(Node, "b").connected  # type: ignore[union-attr]
