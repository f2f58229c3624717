"""The service's lifecycle in one place: start it checked, keep it healthy, stop it, halt it.

The deployment commands (:mod:`knightwatch.agent.commands`) and the kill
switch (:mod:`knightwatch.agent.killswitch`) share one
:class:`ServiceController`; nothing else starts or stops the service. Under
it the :class:`~knightwatch.agent.supervisor.Supervisor` does the process
work (spawn, health, restart on crash, the halt sequence).

*Halted* means the kill-switch latch is set in the journal (``state.json``):
the service must not run, and nothing starts it — not a commit, not a
rollback, not a re-arm's start before the latch is lifted, not an agent
restart (the journal outlives the agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from knightwatch.agent.adoption import Adoptable, Refusal, examine
from knightwatch.agent.checks import probe, read_version, run_smoke, version_matches
from knightwatch.agent.errors import ServiceError
from knightwatch.agent.events import event
from knightwatch.agent.flagfile import NodeFlags
from knightwatch.agent.journal import AgentState, Journal, ServiceRecord, halted_reason
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.procaudit import ProcessFinding, runs_a_release
from knightwatch.agent.process import boot_epoch, read_stat
from knightwatch.agent.runenv import ServiceLaunch, launch_for
from knightwatch.agent.staging import Stager
from knightwatch.agent.supervisor import Stopped, Supervisor
from knightwatch.agent.termination import stop_strays
from knightwatch.bundle.manifest import Manifest
from knightwatch.errors import KnightwatchError
from knightwatch.protocol.flags import FlagValues
from knightwatch.protocol.messages import ServiceState, ServiceStatus
from knightwatch.vocabulary import HaltSource

__all__ = ["HaltCause", "Halted", "ServiceController"]


@dataclass(frozen=True)
class HaltCause:
    """Why the latch is set: who halted, why, the control plane's halt id, since when (epoch s)."""

    source: HaltSource
    reason: str
    halt_id: int | None
    since: float


@dataclass(frozen=True)
class Halted:
    """What :meth:`ServiceController.halt` did: was the latch already set, what it stopped."""

    already: bool
    stopped: Stopped


class ServiceController:
    """Owns the service's lifecycle and the lock that keeps a start and a halt apart.

    What it guarantees:

    - **A start never interleaves with a halt.** :meth:`start` checks the
      latch and spawns the process holding the lock; :meth:`halt` sets the
      latch (journal first) and stops the service holding the same lock. So
      once :meth:`halt` returns no service process is left and none starts
      until :meth:`lift_halt`; a start that won the race is stopped by it.
    - **The latch is the journal's.** :attr:`halted` reads it; while it is
      set :meth:`start` refuses with why (:func:`halted_reason`).
    - **The running process is journaled.** Every change of the supervised
      process is written to the journal's ``service`` record, so the next
      agent start finds (and stops) a service this run left behind.

    A plain :meth:`stop` (a switch stopping the old release) does not take
    the lock: it only stops, like a halt, and whichever comes second finds
    nothing running. Nothing on the halt path waits for a health check: a
    start holds the lock only while it stops what ran before and spawns.
    """

    def __init__(
        self,
        *,
        node: str,
        layout: NodeLayout,
        journal: Journal,
        stager: Stager,
        supervisor: Supervisor,
        flags: NodeFlags | None = None,
    ) -> None:
        self._node = node
        self.flags = flags or NodeFlags(layout, node)
        """The node's flag values; flags.json is written for a release before it starts."""
        self._layout = layout
        self._journal = journal
        self._stager = stager
        self.supervisor = supervisor
        """The supervisor beneath, for reading the service's state (not for starting it)."""
        self._lock = asyncio.Lock()
        supervisor.listen(self._record_service)

    @property
    def halted(self) -> bool:
        """True while the kill-switch latch is set."""
        return self._journal.state.halted

    def status(self) -> ServiceStatus:
        """The service as the agent reports it."""
        return self.supervisor.status()

    # --- starting --------------------------------------------------------------------------

    async def start(self, digest: str, *, smoke: bool) -> str | None:
        """Start ``digest``'s service; None once it is healthy, smoke-checked and versioned.

        Otherwise why not: the latch is set, the release cannot be launched,
        the process did not spawn or failed a check. A release without a
        service stops the running one and reports none.
        """
        try:
            manifest = self._stager.load_manifest(digest)
            launch = self.launch_for(manifest)
        except KnightwatchError as exc:
            return exc.message
        if launch is None:
            await self.supervisor.stop()
            self.supervisor.forget()
            return None
        async with self._lock:
            if (halted := halted_reason(self._journal.state)) is not None:
                return halted  # the kill-switch latch: never start while halted
            try:
                self.flags.write_for(manifest)  # the release's own flags, before it runs
                await self.supervisor.start(launch)
            except ServiceError as exc:
                return exc.message
        reason = await self.supervisor.wait_ready()
        if reason is None and smoke:
            reason = await run_smoke(launch.spec.smoke, launch)
        if reason is None:
            reason = await self._check_version(launch, manifest)
        return reason

    async def ensure_healthy(self, digest: str) -> str | None:
        """Leave a running, healthy service of ``digest`` alone; else (re)start and check it."""
        launch = self._launch_or_none(digest)
        running = self.supervisor.launch
        healthy_so_far = (
            launch is not None
            and running is not None
            and running.digest == digest
            and self.supervisor.running
            and self.supervisor.status().state is ServiceState.RUNNING
        )
        if healthy_so_far and launch is not None:
            health = launch.spec.health
            if health is None or await probe(health, launch) is None:
                return None
        return await self.start(digest, smoke=True)

    def launch_for(self, manifest: Manifest) -> ServiceLaunch | None:
        """How this node runs ``manifest``'s service (None: the release has none)."""
        return launch_for(
            self._layout, manifest, node=self._node, service_port=self._journal.state.service_port
        )

    def receive_flags(self, values: FlagValues) -> None:
        """Keep the control plane's flag values; rewrite flags.json for the active release."""
        digest = self._journal.state.current
        manifest = None
        if digest is not None:
            with contextlib.suppress(KnightwatchError):
                manifest = self._stager.load_manifest(digest)
        self.flags.receive(values, manifest)

    def _launch_or_none(self, digest: str) -> ServiceLaunch | None:
        """:meth:`launch_for` the release ``digest``, None if its manifest cannot be read."""
        try:
            return self.launch_for(self._stager.load_manifest(digest))
        except KnightwatchError:
            return None

    # --- stopping --------------------------------------------------------------------------

    async def stop(self, *, halted: bool = False) -> Stopped:
        """Stop the service (``halted``: report it HALTED, as at shutdown or under the latch)."""
        return await self.supervisor.stop(halted=halted)

    def forget(self) -> None:
        """Report no service at all (the active release has none); call after a stop."""
        self.supervisor.forget()

    async def leave_running(self) -> None:
        """The agent re-execs itself: keep the service running and journaled, stop watching it."""
        await self.supervisor.close()
        self._record_service()

    async def shutdown(self) -> None:
        """The agent is stopping: stop the service, reported HALTED, and the supervisor's tasks."""
        await self.supervisor.stop(halted=True)
        await self.supervisor.close()

    async def take_over(self, record: ServiceRecord) -> bool:
        """Adopt the service an earlier agent run left running, or stop it; True if adopted.

        Adopted only when :func:`~knightwatch.agent.adoption.examine` proves it
        is the active release's service and that release's tree still verifies;
        the process is then supervised (and health-checked by
        :meth:`check_adopted`). Otherwise it is stopped if it is the journaled
        process, left alone if it is not (a reused pid). Either way one
        ``service-adopted`` or ``service-not-adopted`` line says which and why,
        and the node's report carries it (``service.adoption``). The tree is
        hashed outside the lock (a halt never waits for it); the latch is
        checked again under it.
        """
        outcome = await self._prove(record)
        async with self._lock:
            state = self._journal.state
            if isinstance(outcome, Adoptable) and (halted := halted_reason(state)) is not None:
                outcome = Refusal(halted, ours=True, group=outcome.group)
            if isinstance(outcome, Adoptable):
                self._adopt(outcome)
                return True
            _reap_if_child(record.pid)  # a service that died across an exec: no zombie kept
            stopped = outcome.ours and await self.supervisor.stop_adopted(
                record, self._launch_or_none(record.digest), outcome.group
            )
            _reap_if_child(record.pid)
            self._journal.update(service=None)
        self._not_adopted(record, outcome.reason, stopped=stopped)
        return False

    async def _prove(self, record: ServiceRecord) -> Adoptable | Refusal:
        """Every proof of :func:`examine`, then the active tree against its manifest."""
        state = self._journal.state
        current = state.current
        launch = self._launch_or_none(current) if current is not None else None
        outcome = examine(
            record,
            state,
            launch,
            root=self._layout.root,
            cgroups=self.supervisor.cgroups,
            node=self._node,
        )
        if isinstance(outcome, Adoptable):
            outcome = await self._verify_tree(outcome)
        return outcome

    def _not_adopted(self, record: ServiceRecord, reason: str, *, stopped: bool) -> None:
        """Say (log and report) why the left service was not adopted and what became of it."""
        state = self._journal.state
        current = state.current
        has_service = current is not None and self._launch_or_none(current) is not None
        runs = has_service and not state.halted and state.awaiting is None
        what = "stopped" if stopped else "left alone (not ours)"
        held = "; no service starts before the control plane decides" if state.awaiting else ""
        self.supervisor.adoption = (
            f"{'restarted service' if runs else 'not adopted'}: {reason}; "
            f"pid {record.pid} {what}{held}"
        )
        event(
            "service-not-adopted",
            pid=record.pid,
            reason=reason,
            action="stop" if stopped else "leave",
            summary=self.supervisor.adoption,
        )

    async def check_adopted(self) -> str | None:
        """Health- and version-check the adopted service; None when it passes, else why not.

        The caller then starts a fresh service (which stops the adopted one first).
        """
        launch = self.supervisor.launch
        if launch is None:
            return "no service was adopted"
        reason = await self.supervisor.wait_ready()
        if reason is None:
            reason = await self._check_version(launch, self._stager.load_manifest(launch.digest))
        if reason is not None:
            self.supervisor.adoption = (
                f"restarted service: the adopted pid failed its checks: {reason}"
            )
            event("service-adopted-unhealthy", reason=reason, action="restart")
        return reason

    async def _verify_tree(self, proven: Adoptable) -> Adoptable | Refusal:
        """``proven`` if the active release's tree still matches its manifest, else why not."""
        manifest = self._stager.load_manifest(proven.launch.digest)
        tree = proven.launch.release_dir
        report = await asyncio.to_thread(self._stager.verify, manifest, tree)
        if report.ok:
            return proven
        return Refusal(
            f"the active release tree differs from its manifest: {report.summary()}",
            ours=True,
            group=proven.group,
        )

    def _adopt(self, proven: Adoptable) -> None:
        identity, launch = proven.identity, proven.launch
        stat = read_stat(identity.pid)
        child = stat is not None and stat.ppid == os.getpid()
        at = stat.started_at(boot_epoch()) if stat is not None else identity.started_at
        started = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        self.supervisor.adoption = (
            f"adopted running service pid {identity.pid} (release {launch.release_id}, "
            f"started {started} UTC"
            + ("" if child else "; not this agent's child: its exit status will be unknown")
            + ")"
        )
        event(
            "service-adopted",
            pid=identity.pid,
            release=launch.release_id,
            started=started,
            cgroup=str(proven.group.path) if proven.group is not None else None,
            child=child,
            summary=self.supervisor.adoption,
        )
        self.supervisor.adopt(launch, identity, proven.group)

    async def stop_strays(
        self, current: str | None, *, only: Callable[[ProcessFinding], bool] | None = None
    ) -> list[ProcessFinding]:
        """Stop what the process audit flags under the root (see :func:`stop_strays`)."""
        service = self.supervisor.identity()
        return await stop_strays(self._layout.root, current, only=only, service=service)

    # --- the latch -------------------------------------------------------------------------

    async def halt(self, cause: HaltCause) -> Halted:
        """Set the latch (journal first), then stop the service; under the lock.

        Halting a halted node keeps the first cause (source, reason, since)
        and records the control plane's ``halt_id``; the service is stopped
        all the same.
        """
        async with self._lock:
            state = self._journal.state
            already = state.halted
            if not already:
                self._journal.update(
                    halted=True,
                    halt_source=cause.source,
                    halt_id=cause.halt_id,
                    halt_reason=cause.reason,
                    halted_since=cause.since,
                )
            elif cause.halt_id is not None and state.halt_id != cause.halt_id:
                self._journal.update(halt_id=cause.halt_id)
            event(
                "halt",
                source=cause.source,
                halt=cause.halt_id,
                reason=cause.reason,
                already_halted=already,
            )
            stopped = await self.supervisor.stop(halted=True)
        return Halted(already, stopped)

    async def lift_halt(self) -> AgentState:
        """Clear the latch (under the lock); return the journal as it was before."""
        async with self._lock:
            was = self._journal.state
            if was.halted:
                self._journal.update(
                    halted=False,
                    halt_source=None,
                    halt_id=None,
                    halt_reason=None,
                    halted_since=None,
                )
        return was

    async def stop_strays_while_halted(self) -> list[ProcessFinding]:
        """Stop processes running a release that nobody supervises, unless re-armed meanwhile."""
        async with self._lock:
            if not self.halted:
                return []  # what runs now is the supervised service
            return await self.stop_strays(self._journal.state.current, only=runs_a_release)

    # --- helpers ---------------------------------------------------------------------------

    async def _check_version(self, launch: ServiceLaunch, manifest: Manifest) -> str | None:
        version, reason = await read_version(launch)
        self.supervisor.version = version
        if reason is not None:
            return f"version: {reason}"
        if not version_matches(version, launch, manifest.name, manifest.version):
            return f"the service reports version {version!r}, expected {manifest.release_id}"
        return None

    def _record_service(self) -> None:
        """Keep the running service's identity in the journal (for the next agent start)."""
        record = self.supervisor.record()
        if self._journal.state.service != record:
            self._journal.update(service=record)


def _reap_if_child(pid: int) -> None:
    """Reap ``pid`` if it is this process's exited child (after an exec); else do nothing."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
