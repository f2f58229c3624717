"""The agent process: set up the node, then serve the control plane until told to stop.

Start-up (:meth:`Agent.setup`, :mod:`knightwatch.agent.startup`) prepares
the layout, removes what a crash left half-done, loads the node key, enrolls
if needed, loads the trusted keys and reconciles the journal with
``current``. Serving
(:meth:`Agent.serve`) first adopts a service left running by an earlier
agent, or stops it (identified by pid *and* start time, so a reused pid is
never touched) and starts the current release's service afresh; then it runs
the WebSocket connection and the command worker side by side.

On SIGTERM or SIGINT the agent stops the service (halt hook, halt signal,
grace, SIGKILL) and exits 0: ``fleet down`` relies on that. On SIGHUP it
upgrades in place: it stops serving, leaves the service running (journaled),
and ``exec``s its own command line, so freshly installed code runs in the
same pid and adopts the service. If the agent is SIGKILLed, the service (its
own process group) keeps running, and the next agent adopts it when it can
prove it is the active release's service (:mod:`knightwatch.agent.adoption`;
``service-adopted``), or stops it and starts a fresh one
(``service-not-adopted``) — unless the journal says the deployment that
switched ``current`` has an outcome this node has not learned: then no
service runs until the control plane says what became of it (Commit of the
current release: run it; Rollback: go back), and the node reports its
service as stopped and held, with why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from knightwatch.agent.auditor import Auditor
from knightwatch.agent.cgroup import CgroupHost, probe_cgroups
from knightwatch.agent.commands import CommandRunner
from knightwatch.agent.connection import Connection
from knightwatch.agent.enroll import Credential
from knightwatch.agent.errors import CgroupUnavailableError
from knightwatch.agent.events import event, logger
from knightwatch.agent.flagfile import NodeFlags
from knightwatch.agent.guards import RuntimeGuards
from knightwatch.agent.httpsource import HttpReleaseSource
from knightwatch.agent.journal import Journal
from knightwatch.agent.killswitch import HaltResult, KillSwitch
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.limitwatch import LimitWatch, Usage
from knightwatch.agent.reporting import node_state
from knightwatch.agent.service import ServiceController
from knightwatch.agent.servicelog import ServiceLog
from knightwatch.agent.settings import AgentSettings
from knightwatch.agent.source import ReleaseSource
from knightwatch.agent.staging import Stager
from knightwatch.agent.startup import set_up_node
from knightwatch.agent.supervisor import BEST_EFFORT, RestartPolicy, Supervisor
from knightwatch.bundle.signing import TrustedKey
from knightwatch.clock import Clock, SystemClock
from knightwatch.logs import configure_logging
from knightwatch.protocol import ReleaseCommand
from knightwatch.protocol.audit import AuditRequest, Retire, RetireResult
from knightwatch.protocol.flags import FlagValues
from knightwatch.protocol.messages import (
    Abort,
    Ack,
    AckPhase,
    Commit,
    NodeState,
    Prepare,
    ServiceState,
    ServiceStatus,
)
from knightwatch.protocol.reports import NodeKey
from knightwatch.protocol.safety import Halt, HaltSource, Rearm
from knightwatch.tlsca import client_context

__all__ = ["Agent", "reexec", "run_agent"]


def run_agent(settings: AgentSettings, *, clock: Clock | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; return the exit status (0 after a clean stop).

    After SIGHUP the agent replaces itself (:func:`reexec`) and never returns.
    Raise a KnightwatchError (with its exit code) if the agent cannot start.
    """
    configure_logging("agent")
    agent = Agent(settings, clock=clock)
    agent.setup()
    status = asyncio.run(agent.serve_until_signalled())
    if agent.upgrading:
        reexec()
    return status


def reexec() -> NoReturn:
    """Run this agent's command line again in this process (an in-place upgrade).

    ``exec`` keeps the pid, so the service stays this process's child and the
    new code adopts it (:mod:`knightwatch.agent.adoption`). Every descriptor
    Python opened is close-on-exec (PEP 446); the journal is already durable
    (each write is fsynced); the service writes its log file itself, not
    through a pipe to the agent, so nothing of it breaks across the exec.
    """
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    event("agent-reexec", executable=sys.executable, argv=" ".join(argv))
    logging.shutdown()  # flush every handler before the process image goes
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # noqa: S606 -- our own command line, no shell


class Agent:
    """One node's agent: its layout, journal, stager, supervisor and connection."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        clock: Clock | None = None,
        source: ReleaseSource | None = None,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.layout = NodeLayout(settings.root.absolute())
        self.journal = Journal(self.layout, settings.name)
        self.policy = policy or RestartPolicy(health_timeout_s=settings.health_timeout_s)
        self._source = source
        self.key: NodeKey | None = None
        self.credential: Credential | None = None
        self.trusted: list[TrustedKey] = []
        self.verify = client_context(settings.ca)
        """How the control plane's TLS certificate is checked: the pinned --ca, if given."""
        self.upgrading = False
        """Set by SIGHUP: stop serving, leave the service running, then re-exec."""

    # --- start-up ------------------------------------------------------------------------

    def setup(self) -> None:
        """Prepare the node; raise AgentSetupError (exit 2) when the agent cannot start."""
        node = set_up_node(self.settings, self.layout, self.journal, verify=self.verify)
        self.key, self.credential, self.trusted = node.key, node.credential, node.trusted

    # --- serving -------------------------------------------------------------------------

    async def serve_until_signalled(self) -> int:
        """Serve until SIGTERM or SIGINT (stop cleanly) or SIGHUP (leave the service, upgrade)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def upgrade() -> None:
            self.upgrading = True
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, upgrade)
        try:
            return await self.serve(stop)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)

    async def serve(self, stop: asyncio.Event) -> int:
        """Run the connection and the command worker until ``stop`` is set; return 0.

        Stopping cancels the command in progress (a staging thread stops at
        its next step), halts the service while heartbeats still flow, and
        only then closes the connection. When :attr:`upgrading` (SIGHUP), the
        service is left running and journaled instead, for the next agent
        to adopt.
        """
        commands: asyncio.Queue[ReleaseCommand] = asyncio.Queue()
        self._wire(commands)
        worker = asyncio.create_task(self._work(commands))
        audit = asyncio.create_task(self._audit_forever())
        guards = asyncio.create_task(self.guards.run())
        limits = asyncio.create_task(self.limits.run())
        link = asyncio.create_task(self.connection.run())
        dead_man = asyncio.create_task(
            self.killswitch.watch_link(
                lambda: self.connection.last_heard, lambda: self.connection.hello
            )
        )
        try:
            await stop.wait()
        finally:
            event("agent-stopping", node=self.settings.name)
            self.runner.stager.cancel.set()
            await _cancel(worker)
            await _cancel(audit)
            await _cancel(guards)
            await _cancel(limits)
            await _cancel(dead_man)
            if self.upgrading:
                await self.service.leave_running()
            else:
                await self.service.shutdown()
            await _cancel(link)
            self.runner.source.close()
            if not self.upgrading:
                self.journal.update(service=None)
        event("agent-stopped", node=self.settings.name, service_left_running=self.upgrading)
        return 0

    def _wire(self, commands: asyncio.Queue[ReleaseCommand]) -> None:
        assert self.key is not None and self.credential is not None, "call setup() first"
        self.supervisor = Supervisor(
            ServiceLog(self.layout.service_log),
            clock=self.clock,
            policy=self.policy,
            cgroups=_cgroups(self.settings.cgroup_mount),
            node=self.settings.name,
        )
        self.supervisor.remove_stale_groups()
        stager = Stager(self.layout, self.trusted)
        self.service = ServiceController(
            node=self.settings.name,
            layout=self.layout,
            journal=self.journal,
            stager=stager,
            supervisor=self.supervisor,
            flags=NodeFlags(self.layout, self.settings.name, self.clock),
        )
        self.auditor = Auditor(
            layout=self.layout,
            journal=self.journal,
            stager=stager,
            supervisor=self.supervisor,
            clock=self.clock,
            settings=self.settings.audit,
            on_change=self._drift_changed,
        )
        self.runner = CommandRunner(
            layout=self.layout,
            journal=self.journal,
            stager=stager,
            service=self.service,
            source=self._source
            or HttpReleaseSource(self.settings.server, self.credential, verify=self.verify),
            clock=self.clock,
            audit_hold=self.auditor.hold,
            stale_tolerance_s=self.settings.audit.stale_tolerance_s,
        )
        self.connection = Connection(
            server=self.settings.server,
            credential=self.credential,
            key=self.key,
            verify=self.verify,
            clock=self.clock,
            state=self.node_state,
            commands=commands,
            heartbeat_s=self.settings.heartbeat_s,
            on_audit=self._start_audit,
            on_halt=self._on_halt,
            on_flags=self._on_flags,
        )
        self._audits: set[asyncio.Task[None]] = set()
        self._evaluations_sent: tuple[int, dict[str, int]] = (-1, {})
        self._halts: set[asyncio.Task[None]] = set()
        self.guards = RuntimeGuards(
            launch=lambda: self.supervisor.launch,
            running=lambda: self.supervisor.status().state is ServiceState.RUNNING,
            guards=lambda digest: stager.load_manifest(digest).spec.guard,
            log_path=self.layout.service_log,
            halt=self.halt,
            send=self.connection.send_alerts,
            clock=self.clock,
        )
        self.supervisor.listen(self.guards.follow)
        self.limits = LimitWatch(self._usage, self.connection.send_alerts, clock=self.clock)
        self.killswitch = KillSwitch(
            journal=self.journal,
            service=self.service,
            clock=self.clock,
            start_service=self.runner.start_current,
            on_change=self._drift_changed,
        )

    def _usage(self) -> Usage | None:
        """The running release's cgroup counters, for the limit alerts."""
        launch, group = self.supervisor.launch, self.supervisor.cgroup_status()
        if launch is None or group is None:
            return None
        return Usage(launch.release_id, group)

    def _drift_changed(self) -> None:
        connection: Connection | None = getattr(self, "connection", None)
        if connection is not None:
            connection.drift_changed()

    def node_state(self) -> NodeState:
        """What the agent reports about the node right now."""
        service = self.supervisor.status()
        held = self.runner.held
        if held is not None and service.state in (ServiceState.NONE, ServiceState.STOPPED):
            service = ServiceStatus(
                state=ServiceState.STOPPED,
                detail=f"held: deployment {held} switched this node and its outcome is not known "
                "here yet; no service starts before the control plane's decision",
            )
        state = node_state(
            self.journal.state, service, self.auditor.status(), metrics=self.guards.metrics()
        )
        flags = self.service.flags
        return state.model_copy(
            update={
                "halt": self.killswitch.state(),
                "flags_version": flags.version,
                "flag_evaluations": self._new_evaluations(),
            }
        )

    def _new_evaluations(self) -> dict[str, int]:
        """The service's evaluation counts when they changed since this session last sent them.

        Heartbeats would otherwise carry (and the control plane store) the same
        counts every second; a new session sends them again, so a report lost
        with a broken link is made good.
        """
        counts = self.service.flags.evaluations(self.journal.state.current)
        session = self.connection.sessions
        if (session, counts) == self._evaluations_sent:
            return {}
        self._evaluations_sent = (session, counts)
        return counts

    async def halt(self, source: HaltSource, reason: str) -> HaltResult:
        """Halt the service now and latch it (a guard, or anything on the node, calls this)."""
        return await self.killswitch.halt(source, reason)

    def _on_flags(self, message: FlagValues) -> None:
        """New flag values: write flags.json now, then acknowledge the version it holds."""
        try:
            self.service.receive_flags(message)
        except OSError as exc:  # not acknowledged: the control plane lists this node as missing
            event("flags-write-failed", version=message.version, detail=str(exc))
            return
        event("flags-written", version=message.version)
        self.connection.flags_changed()

    def _on_halt(self, message: Halt | Rearm) -> None:
        """A kill or re-arm from the control plane: act on it at once, beside any command."""
        task = asyncio.create_task(self._answer_halt(message, self.clock.now()))
        self._halts.add(task)
        task.add_done_callback(self._halts.discard)

    async def _answer_halt(self, message: Halt | Rearm, received: datetime) -> None:
        try:
            if isinstance(message, Halt):
                result = await self.killswitch.halt(
                    message.source,
                    message.reason,
                    message.halt_id,
                    received_at=received,
                    announce=False,
                )
                self.connection.send_ack(result.ack(message.halt_id))
            else:
                self.connection.send_ack(
                    await self.killswitch.rearm(message.halt_id, message.reason)
                )
        except Exception:
            logger.exception("halt-command-crashed")

    async def _audit_forever(self) -> None:
        """Run the continuous audit; restart it if it ever fails."""
        while True:
            try:
                await self.auditor.run()
            except Exception:
                logger.exception("audit-failed")
                await asyncio.sleep(1.0)

    def _start_audit(self, request: AuditRequest) -> None:
        task = asyncio.create_task(self._audit(request))
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    async def _audit(self, request: AuditRequest) -> None:
        started = asyncio.get_running_loop().time()
        try:
            result = await self.auditor.audit_now(request)
        except Exception:
            logger.exception("audit-crashed")
            return
        event(
            "audit-finished",
            audit=request.audit_id,
            findings=result.total,
            files=result.files,
            seconds=asyncio.get_running_loop().time() - started,
        )
        self.connection.send_ack(result)

    async def _work(self, commands: asyncio.Queue[ReleaseCommand]) -> None:
        await self.runner.resume()
        loop = asyncio.get_running_loop()
        while True:
            command = await commands.get()
            started = loop.time()
            event("command-start", type=command.type, digest=command.digest)
            try:
                answer = await self.runner.run(command)
            except Exception as exc:  # one bad command must not stop the worker
                logger.exception("command-crashed")
                answer = _failed(command, f"internal error: {type(exc).__name__}: {exc}")
            event(
                "command-finished",
                type=command.type,
                outcome=answer.phase.value if isinstance(answer, Ack) else answer.absent,
                detail=answer.reason if isinstance(answer, Ack) else answer.detail,
                seconds=loop.time() - started,
            )
            self.connection.send_ack(answer)
            await self.runner.collect_garbage()


_FAILED = {
    Prepare: AckPhase.PREPARE_FAILED,
    Commit: AckPhase.COMMIT_FAILED,
    Abort: AckPhase.ABORTED,
}


def _failed(command: ReleaseCommand, reason: str) -> Ack | RetireResult:
    if isinstance(command, Retire):
        return RetireResult(
            retirement_id=command.retirement_id,
            digest=command.digest,
            absent=False,
            detail=reason[:2000],
        )
    phase = _FAILED.get(type(command), AckPhase.ROLLBACK_FAILED)
    return Ack(
        deployment_id=command.deployment_id,
        digest=command.digest,
        phase=phase,
        reason=reason[:4096],
    )


def _cgroups(mount: Path) -> CgroupHost | None:
    """Where the service's cgroups go; None (and why, logged) when none can be created."""
    try:
        host = probe_cgroups(mount)
    except CgroupUnavailableError as exc:
        event("cgroup-unavailable", accounting=BEST_EFFORT, reason=exc.message)
        return None
    event("cgroup-layout", version=host.version, parents=" ".join(map(str, host.parents.values())))
    return host


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await task
        except Exception:  # reported; shutting down goes on
            logger.exception("task-failed")
