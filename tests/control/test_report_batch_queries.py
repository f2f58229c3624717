"""A batch of agent reports costs a few queries, not a few per report.

At 10,000 agents every report's own row loads (its node, the halt it names,
the halt row it acknowledges) were most of the store thread's time; the
batch loads them together. This counts the SELECTs a batch of 40 halt
acknowledgements issues, and checks every acknowledgement was recorded.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from sqlalchemy import event, select

from knightwatch.control.ingest import Ingested
from knightwatch.control.killswitch import issue_halt
from knightwatch.protocol import HaltAck, HaltState, NodeState, Report
from knightwatch.server.report_batch import ReportBatcher
from knightwatch.store import Database, HaltNode, Node

COUNT = 40


def _now() -> datetime:
    return datetime.now(UTC)


class _Sender:
    """The connection side the batcher needs: a node, whether it greeted, its effects."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.greeted = True  # not a first report: no greeting work in this count

    def after_commit(self, report: Report, ingested: Ingested) -> None:
        """Nothing to send in this test."""


def _ack(node: str, halt_id: int) -> Report:
    now = _now()
    return Report(
        node=node,
        nonce="n" * 24,
        seq=1,
        sent_at=now,
        kind="halt",
        state=NodeState(halt=HaltState(halted=True, halt_id=halt_id, since=now, reason="x")),
        halt=HaltAck(halt_id=halt_id, received_at=now, halted_at=now),
    )


def test_a_batch_of_halt_acks_loads_its_rows_together(db: Database) -> None:
    names = [f"n{i:03d}" for i in range(COUNT)]
    with db.session() as session:
        for name in names:
            session.add(Node(name=name, status="enrolled", connected=True, created_at=_now()))
    with db.session() as session:
        plan = issue_halt(session, None, "drill", "alice", _now())
    selects: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)

    async def run(batcher: ReportBatcher) -> None:
        reports = [batcher.store(_Sender(n), _ack(n, plan.message.halt_id)) for n in names]
        await asyncio.gather(*reports)

    with ThreadPoolExecutor(max_workers=1) as worker:
        batcher = ReportBatcher(db, worker, _now)
        asyncio.run(run(batcher))
    event.remove(db.engine, "before_cursor_execute", count)
    assert len(selects) < COUNT / 2 * batcher.batches, (
        f"{len(selects)} SELECTs in {batcher.batches} batch(es)"
    )
    with db.session() as session:
        acked = session.scalars(
            select(HaltNode.acked_at).where(HaltNode.halt_id == plan.message.halt_id)
        )
        assert all(at is not None for at in acked)
