"""The running control plane: its store, clock, agent hub and services, wired once.

Routes (``knightwatch.api``) and the background loop (``server.background``)
both act through one ``ControlPlane``; halting is its method, so a fleet guard,
an agent's halt request and the operator's kill all record and send the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from knightwatch.bundle.signing import TrustedKey, load_trusted_key
from knightwatch.clock import Clock, SystemClock
from knightwatch.control import auditlog
from knightwatch.control.deploy import Orchestrator
from knightwatch.control.deploy_requests import DeployTimeouts
from knightwatch.control.fleet import mark_all_disconnected
from knightwatch.control.guards import FleetGuards
from knightwatch.control.ingest import Ingested
from knightwatch.control.killswitch import HaltPlan, issue_halt
from knightwatch.control.releases import ReleaseCatalog
from knightwatch.server.checkpoints import Checkpoint, CheckpointLog
from knightwatch.server.credentials import CredentialCache
from knightwatch.server.documents import ReleaseDocuments
from knightwatch.server.hub import AgentHub
from knightwatch.server.login_failures import LoginFailures
from knightwatch.server.refusals import RefusalRecords
from knightwatch.server.report_batch import ReportBatcher, ReportSender, report_commit_fault
from knightwatch.server.settings import ServerSettings
from knightwatch.server.signals import ChangeSignal
from knightwatch.server.users import UserCache, adopt_operator_token, load_users_key
from knightwatch.server.web_sessions import WebSessions
from knightwatch.store import Database, open_database
from knightwatch.vocabulary import HaltSource

__all__ = ["ControlPlane"]

log = logging.getLogger("knightwatch.server")

T = TypeVar("T")


@dataclass
class ControlPlane:
    """Everything a running control plane holds, wired together once."""

    settings: ServerSettings
    db: Database
    clock: Clock
    hub: AgentHub
    catalog: ReleaseCatalog
    orchestrator: Orchestrator
    users_key: bytes
    """The HMAC key user tokens are stored under (DATA/users.key)."""
    trusted: list[TrustedKey]
    credentials: CredentialCache
    fleet_guards: FleetGuards
    documents: ReleaseDocuments
    store_worker: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="store")
    )
    """One thread for the agent sessions' and the tick's store work, in arrival order."""
    halt_acks: ChangeSignal = field(default_factory=ChangeSignal)
    """Bumped when a halt acknowledgement was stored (``GET /halts/{id}?wait_s=``)."""
    flag_acks: ChangeSignal = field(default_factory=ChangeSignal)
    """Bumped when a node's flags.json moves to another flag-state version."""
    users: UserCache = field(default_factory=UserCache)
    """Recently authenticated operator tokens."""
    login_failures: LoginFailures = field(default_factory=lambda: LoginFailures(SystemClock()))
    """Refused operator credentials per address: counted, slowed, recorded."""
    web_sessions: WebSessions = field(default_factory=lambda: WebSessions(SystemClock()))
    """Signed-in dashboard browsers (cookie sessions, in memory only)."""
    refusals: RefusalRecords = field(default_factory=lambda: RefusalRecords(SystemClock()))
    """Agents refused at connect: which refusals to write (not every retry)."""
    reports: ReportBatcher = field(init=False)
    """Agent reports, stored in batches on the store thread (group commit)."""
    checkpoints: CheckpointLog | None = None
    """Signed audit-log checkpoints, outside the database (None: not kept)."""
    next_checkpoint: float = 0.0
    """When (``clock.monotonic``) the tick next writes a checkpoint if the log grew."""
    checkpointed_seq: int = -1
    next_upload_sweep: float = 0.0
    """When (``clock.monotonic``) the tick next deletes abandoned uploads."""
    stopping: bool = False
    """Set when the server begins to stop: agent sessions end without store work."""

    def __post_init__(self) -> None:
        self.reports = ReportBatcher(
            self.db,
            self.store_worker,
            self.clock.now,
            before_commit=report_commit_fault(),
            on_acks=self.orchestrator.on_acks,
            on_greetings=self.greet,
        )

    def greet(self, greeted: Sequence[tuple[ReportSender, Ingested]]) -> None:
        """What the sessions that greeted in one report batch are owed (the batcher calls it).

        The orchestrator first, for every node at once (how past deployments
        ended, what the running one needs), then the retire commands each node
        still owes an answer to.
        """
        self.orchestrator.on_connects([sender.node for sender, _ in greeted])
        self.hub.send_each(
            (sender.node, command) for sender, ingested in greeted for command in ingested.retires
        )

    async def in_store(self, work: Callable[[], T]) -> T:
        """Run ``work`` (store transactions) on the store thread, keeping the event loop free.

        The loop must answer every agent's pings and carry halts at once; one
        agent's report may cost a transaction and an fsync. One thread keeps
        this work in order, as it was on the loop, without ever blocking it.
        """
        return await asyncio.get_running_loop().run_in_executor(self.store_worker, work)

    def disconnect_everyone(self) -> None:
        """Record every node as disconnected now, in one transaction (the server is stopping).

        A stopping server has a session per agent; each marking its node
        alone would queue one transaction per agent behind the others, past
        the graceful shutdown's deadline at a thousand agents.
        """
        with self.db.session() as session:
            mark_all_disconnected(session, now=self.clock.now())

    def record_halt(
        self,
        selector: str | None,
        reason: str,
        requested_by: str,
        *,
        source: HaltSource = HaltSource.KILL,
    ) -> HaltPlan:
        """Record a halt of the selected nodes (all when ``selector`` is None) in the store."""
        with self.db.session() as session:
            return issue_halt(
                session, selector, reason, requested_by, self.clock.now(), source=source
            )

    def send_halt(self, plan: HaltPlan) -> None:
        """Queue a recorded halt on every connected node's WebSocket (call on the event loop).

        Only queue puts happen between two sends: no store work, so the last
        node hears of the halt as soon as the first.
        """
        self.hub.send_each((node, plan.message) for node in plan.online)

    def record_login_failures(self, address: str, route: str, failures: int) -> None:
        """Write refused operator credentials from ``address`` to the audit log."""
        with self.db.session() as session:
            auditlog.append(
                session,
                actor=f"unauthenticated@{address}"[:255],
                action="auth.failed",
                obj=address[:255],
                at=self.clock.now(),
                payload={"route": route[:200], "failures": failures},
            )
        log.warning("%d refused operator credential(s) from %s (%s)", failures, address, route)

    def checkpoint(self, *, force: bool = False) -> Checkpoint | None:
        """Sign and keep the log's head if it moved since the last checkpoint (or ``force``)."""
        if self.checkpoints is None:
            return None
        with self.db.reading() as session:  # read inside: the snapshot ends with the block
            last = auditlog.head(session)
            seq, head = (0, auditlog.GENESIS) if last is None else (last.seq, last.hash)
        if seq == self.checkpointed_seq and not force:
            return None
        written = self.checkpoints.write(seq, head, self.clock.now())
        self.checkpointed_seq = seq
        return written

    def halt(self, selector: str | None, reason: str, requested_by: str) -> HaltPlan:
        """Record a halt and send it at once, from code on the event loop (a fleet guard).

        The halt is recorded with source ``guard``, on the nodes and on the agents.
        """
        plan = self.record_halt(selector, reason, requested_by, source=HaltSource.GUARD)
        self.send_halt(plan)
        return plan

    @classmethod
    def open(cls, settings: ServerSettings, clock: Clock | None = None) -> ControlPlane:
        """Open the store (migrating it), load keys and tokens, build the services."""
        clock = clock or SystemClock()
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # private if ours
        url = settings.database_url.reveal() if settings.database_url else None
        db = open_database(url, settings.data_dir)
        users_key = load_users_key(settings.data_dir)
        configured = settings.operator_token.reveal() if settings.operator_token else None
        adopt_operator_token(db, settings.data_dir, configured, users_key, clock)
        trusted = _trusted_keys(settings)
        hub = AgentHub()
        timeouts = DeployTimeouts(
            settings.prepare_timeout_s,
            settings.commit_timeout_s,
            settings.rollback_timeout_s,
            settings.canary_soak_s,
        )
        return cls(
            settings=settings,
            db=db,
            clock=clock,
            hub=hub,
            catalog=ReleaseCatalog(db, settings.data_dir, trusted, clock),
            orchestrator=Orchestrator(db, hub, clock, timeouts),
            users_key=users_key,
            trusted=trusted,
            credentials=CredentialCache(),
            fleet_guards=FleetGuards(settings.guard, period_s=settings.heartbeat_s),
            documents=ReleaseDocuments(),
            login_failures=LoginFailures(clock),
            web_sessions=WebSessions(clock),
            checkpoints=CheckpointLog(
                settings.audit_checkpoints or settings.data_dir / "audit" / "checkpoints.jsonl",
                settings.audit_checkpoint_key or settings.data_dir / "audit" / "checkpoint.key",
            ),
        )


def _trusted_keys(settings: ServerSettings) -> list[TrustedKey]:
    paths = list(settings.trusted_keys)
    trusted_dir = settings.data_dir / "trusted"
    if trusted_dir.is_dir():
        paths.extend(sorted(trusted_dir.glob("*.pub")))
    return [load_trusted_key(path) for path in paths]
