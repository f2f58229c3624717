"""Group commit of agent reports: those that arrive together are stored in one transaction.

A fleet's reports come in bursts — every agent acknowledges a halt, a
PREPARE or a flag change within milliseconds of the others — and on the
store's single thread one transaction (and one fsync) per report is what
made a 256-agent kill wait. Each report is queued with a future; the store
thread takes everything queued so far and stores it in one transaction, one
savepoint per report, so a report that fails is rolled back alone and only
its sender hears of it. Effects (messages to agents, waking waiters, the
orchestrator) run only after the commit, in arrival order: nothing is sent
on the strength of a report that could still be lost.

If the control plane dies before the commit, nothing of the batch is stored
and nothing was acted on; each agent reconnects and greets with its whole
state (its halt latch included), which the new process stores once.

A session's start and end (:class:`SessionChange`) go through the same queue:
a thousand agents reconnecting after a restart are a thousand connects in a
few transactions, not a thousand fsyncs in a row, and each stays in order
with its session's reports.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.control.deploy import ServiceFacts
from knightwatch.control.fleet import record_fleet_conditions
from knightwatch.control.fleet_conditions import lock_fleet
from knightwatch.control.ingest import Ingested, ingest_agent_report
from knightwatch.protocol import Ack, Report
from knightwatch.store import Database, Halt, HaltNode, Node
from knightwatch.store.batches import apply_item, fast_then_isolated

__all__ = ["PAUSE_ENV", "ReportBatcher", "ReportSender", "SessionChange", "report_commit_fault"]

log = logging.getLogger("knightwatch.server")

PAUSE_ENV = "KNIGHTWATCH_FAULT_PAUSE_IN"
"""Fault tests: ``halt-ack-commit`` stalls the store thread before committing a batch
that holds a halt acknowledgement, so a test can kill the server exactly there."""
PAUSE_S = 600.0
MAX_BATCH = 500
"""Reports stored in one transaction at most (a larger backlog takes several)."""
MAX_BATCH_S = 0.25
"""A batch is committed once storing it took this long, so that other writers (an
operator's halt among them) never wait on SQLite's write lock for long."""


GreetingSink = Callable[[Sequence[tuple["ReportSender", Ingested]]], None]
"""Acts on the sessions whose first report the batch stored, together (they reconnect in storms)."""

AckSink = Callable[[Sequence[tuple[str, Ack, ServiceFacts | None]]], list[Exception | None]]
"""Records deployment acks that arrived together (``Orchestrator.on_acks``)."""


class ReportSender(Protocol):
    """The connection a report came on, as the batcher needs it."""

    node: str
    greeted: bool

    def after_commit(self, report: Report, ingested: Ingested) -> None:
        """Act on a stored report (on the store thread, after its transaction committed)."""


@dataclass(frozen=True)
class SessionChange:
    """A session's connect or disconnect, recorded in a batch like a report."""

    record: Callable[[Session], bool]
    """Writes the change in the batch's transaction; True if the fleet may have changed."""
    after: Callable[[], None] | None = None
    """Runs on the store thread once the change is committed."""
    node: str | None = None
    """The node whose session changed (its row is loaded with the batch's others)."""


@dataclass(frozen=True)
class _Recorded:
    fleet_changed: bool


@dataclass
class _Queued:
    sender: ReportSender | None
    report: Report | SessionChange
    done: asyncio.Future[None]

    @property
    def agent_report(self) -> Report | None:
        """The agent's report, if this is one (not a session's change)."""
        return self.report if isinstance(self.report, Report) else None


class ReportBatcher:
    """Stores queued reports in batches on the store thread."""

    def __init__(
        self,
        db: Database,
        worker: Executor,
        now: Callable[[], datetime],
        before_commit: Callable[[list[Report]], None] | None = None,
        on_acks: AckSink | None = None,
        on_greetings: GreetingSink | None = None,
    ) -> None:
        self._db = db
        self._on_acks = on_acks
        """Where the batch's deployment acks go, together, once every report's effects ran."""
        self._on_greetings = on_greetings
        """Where the sessions greeted in a batch go, once every report's own effects ran."""
        self._worker = worker
        self._now = now
        self._before_commit = before_commit
        """A fault test's hook: called with the batch's reports, stored but not committed."""
        self._lock = threading.Lock()
        self._queued: list[_Queued] = []
        self._draining = False
        self.batches = 0
        self.largest = 0

    async def store(self, sender: ReportSender, report: Report) -> None:
        """Store ``report`` (with whatever else is queued) and act on it; raise if it failed."""
        await self._enqueue(sender, report)

    async def record(self, change: SessionChange) -> None:
        """Record a session's change in the next batch; raise what its ``record`` raised."""
        await self._enqueue(None, change)

    async def _enqueue(self, sender: ReportSender | None, report: Report | SessionChange) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._queued.append(_Queued(sender, report, done))
            start = not self._draining
            self._draining = True
        if start:
            loop.run_in_executor(self._worker, self._drain, loop)
        await done

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._lock:
                batch, self._queued = self._queued, []
                if not batch:
                    self._draining = False
                    return
            try:
                self._store(batch, loop)
            except Exception as exc:  # a bug here must not leave every sender waiting
                log.exception("the report batch failed")
                _settle_all(loop, [(item.done, exc) for item in batch])

    def _store(self, queued: list[_Queued], loop: asyncio.AbstractEventLoop) -> None:
        batch, outcomes = fast_then_isolated(
            lambda isolated: self._write(queued, isolated=isolated), "a batch of agent reports"
        )
        self._requeue(queued[len(batch) :])  # what did not fit, first in line
        self.batches += 1
        self.largest = max(self.largest, len(batch))
        acted: list[tuple[_Queued, Ingested | _Recorded]] = []
        settled: list[tuple[asyncio.Future[None], BaseException | None]] = []
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                settled.append((item.done, outcome))
                continue
            try:
                _act(item, outcome)
            except Exception as exc:  # one connection's trouble is not the batch's
                log.exception("acting on a stored report or session change failed")
                settled.append((item.done, exc))
                continue
            acted.append((item, outcome))
        failed = self._greetings(acted)
        items = [item for item, _ in acted]
        for item, failure in zip(items, self._acks(items), strict=True):
            settled.append((item.done, failed.get(id(item), failure)))
        _settle_all(loop, settled)

    def _write(
        self, queued: list[_Queued], *, isolated: bool
    ) -> tuple[list[_Queued], list[Ingested | _Recorded | BaseException]]:
        """Store a batch taken from ``queued`` in one transaction; the batch and each outcome.

        Not ``isolated`` (the first try, see :mod:`knightwatch.store.batches`),
        any failure raises. The batch is a prefix of ``queued``: what the
        deadline or the size limit left out is the caller's to requeue.
        """
        outcomes: list[Ingested | _Recorded | BaseException] = []
        batch: list[_Queued] = []
        try:
            with self._db.session() as session:
                # The fleet row first, then node rows, as every writer does: on PostgreSQL a
                # batch writing nodes in arrival order against a halt writing them in bulk
                # deadlocked at 1,000 agents.
                lock_fleet(session, self._now())
                # The batch's rows in a few queries, held here so the session keeps them.
                held = _load_rows(session, queued[:MAX_BATCH])
                greeted: set[int] = set()
                deadline = time.monotonic() + MAX_BATCH_S
                for item in queued:
                    if batch and (len(batch) >= MAX_BATCH or time.monotonic() > deadline):
                        break
                    batch.append(item)
                    ingest = partial(self._ingest, session, item, greeted)
                    outcome = apply_item(session, ingest, isolated=isolated)
                    if isinstance(outcome, Ingested) and item.sender is not None:
                        greeted.add(id(item.sender))
                    outcomes.append(outcome)
                if any(isinstance(o, Ingested | _Recorded) and o.fleet_changed for o in outcomes):
                    record_fleet_conditions(session, self._now())  # once for the batch
                if self._before_commit is not None:
                    self._before_commit([r for item in batch if (r := item.agent_report)])
                del held
        except Exception as exc:  # the commit itself failed: every report of the batch did
            if not isolated:
                raise
            log.exception("storing %d agent reports failed", len(batch))
            outcomes = [exc] * len(batch)
        return batch, outcomes

    def _greetings(self, acted: list[tuple[_Queued, Ingested | _Recorded]]) -> dict[int, Exception]:
        """Hand the sessions greeted in this batch over in one call; on failure, each one's."""
        greeted = [
            (item, sender, outcome)
            for item, outcome in acted
            if isinstance(outcome, Ingested) and outcome.greeting and (sender := item.sender)
        ]
        if not greeted or self._on_greetings is None:
            return {}
        try:
            self._on_greetings([(sender, outcome) for _, sender, outcome in greeted])
        except Exception as exc:  # each session hears of it, ends, and greets again
            log.exception("acting on %d greetings failed", len(greeted))
            return {id(item): exc for item, _, _ in greeted}
        return {}

    def _acks(self, acted: list[_Queued]) -> list[Exception | None]:
        """Hand the deployment acks of the stored reports over in one call; each one's failure."""
        with_ack = [
            (item, sender, report, report.ack)
            for item in acted
            if (report := item.agent_report) and report.ack and (sender := item.sender)
        ]
        if not with_ack or self._on_acks is None:
            return [None] * len(acted)
        acks = [(sender.node, ack, _service_facts(report)) for _, sender, report, ack in with_ack]
        try:
            results = zip(with_ack, self._on_acks(acks), strict=True)
            failures = {id(entry[0]): failure for entry, failure in results}
        except Exception as exc:  # the acks' transaction failed: each sender hears of it
            log.exception("recording %d deployment acks failed", len(acks))
            failures = {id(entry[0]): exc for entry in with_ack}
        return [failures.get(id(item)) for item in acted]

    def _requeue(self, rest: list[_Queued]) -> None:
        """Put back, first in line, what did not fit in this batch."""
        if rest:
            with self._lock:
                self._queued[:0] = rest

    def _ingest(self, session: Session, item: _Queued, greeted: set[int]) -> Ingested | _Recorded:
        sender, report = item.sender, item.report
        if isinstance(report, SessionChange):
            return _Recorded(report.record(session))
        if sender is None:
            raise ValueError("an agent report without its connection")
        first = not sender.greeted and id(sender) not in greeted
        return ingest_agent_report(session, sender.node, report, self._now(), first=first)


def _load_rows(session: Session, queued: Sequence[_Queued]) -> list[object]:
    """Load the rows a batch will write in a query each (the session then has them).

    Every sender's node row; the halts its reports name (the one that holds
    its latch, the one it acknowledges) and the rows its halt and re-arm
    acknowledgements write: a fleet's answers to one halt or lift, and its
    latched reports after a lift, arrive together.
    """
    names = {name for item in queued if (name := _node_of(item)) is not None}
    if not names:
        return []
    rows: list[object] = list(session.scalars(select(Node).where(Node.name.in_(names))))
    reports = [(item.sender.node, r) for item in queued if (r := item.agent_report) and item.sender]
    halt_ids = {r.state.halt.halt_id for _, r in reports if r.state.halt.halt_id is not None}
    acks = [(node, r.halt.halt_id) for node, r in reports if r.halt is not None]
    acks += [(node, r.rearm.halt_id) for node, r in reports if r.rearm is not None]
    halt_ids.update(halt_id for _, halt_id in acks)
    if halt_ids:
        rows.extend(session.scalars(select(Halt).where(Halt.id.in_(halt_ids))))
    if acks:
        statement = select(HaltNode).where(
            HaltNode.halt_id.in_({halt_id for _, halt_id in acks}),
            HaltNode.node_name.in_({node for node, _ in acks}),
        )
        rows.extend(session.scalars(statement))
    return rows


def _node_of(item: _Queued) -> str | None:
    if item.sender is not None:
        return item.sender.node
    if isinstance(item.report, SessionChange):
        return item.report.node
    return None


def _act(item: _Queued, outcome: Ingested | _Recorded) -> None:
    """Run a stored item's effects: the connection's for a report, the change's own else."""
    report = item.report
    if isinstance(report, SessionChange):
        if report.after is not None:
            report.after()
    elif item.sender is not None and isinstance(outcome, Ingested):
        item.sender.after_commit(report, outcome)


def _service_facts(report: Report) -> ServiceFacts:
    service = report.state.service
    return (service.pid, service.started_at, service.version)


def _settle_all(
    loop: asyncio.AbstractEventLoop,
    settled: Sequence[tuple[asyncio.Future[None], BaseException | None]],
) -> None:
    """Settle the batch's futures on their loop, in one wake-up of it (not one per report)."""

    def settle() -> None:
        for done, outcome in settled:
            if done.done():
                continue
            if outcome is None:
                done.set_result(None)
            else:
                done.set_exception(outcome)

    if settled:
        loop.call_soon_threadsafe(settle)


def report_commit_fault() -> Callable[[list[Report]], None] | None:
    """The pause before a halt acknowledgement's commit, if the fault variable asks for it."""
    if os.environ.get(PAUSE_ENV) != "halt-ack-commit":
        return None

    def pause(reports: list[Report]) -> None:
        if any(report.halt is not None for report in reports):
            log.warning("fault-pause: halt-ack-commit for %.0f s", PAUSE_S)
            time.sleep(PAUSE_S)

    return pause
