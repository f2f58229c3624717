"""The four commands of a deployment, each idempotent, each answered with one Ack.

========  =======================================================================
prepare   fetch, verify and stage the release; PREPARED or PREPARE_FAILED
commit    journal, stop the service, switch ``current``, start, health, smoke,
          version; ACTIVE or COMMIT_FAILED (left as is: the control plane rolls
          back); then garbage-collect (:mod:`~knightwatch.agent.garbage`)
rollback  the same switch back to a release still on disk; ROLLED_BACK or
          ROLLBACK_FAILED
abort     forget a staged release (never the current or previous one); ABORTED
retire    delete a retired release's tree, verify its absence; a RetireResult
========  =======================================================================

A reconcile is a prepare and a commit with ``restage``: a fresh tree of the
active release is built and verified beside the live one, then swapped in
atomically while every process running from the agent's root is stopped.
While a command switches releases the continuous audit is held.

A command the server re-sends after its own restart finds its work done and
answers the same way: a staged tree is re-verified, not rebuilt; a commit of
the release that is already current and healthy does not restart it.

A commit that switches journals its deployment as ``awaiting`` an outcome;
the control plane settles it with a Commit of the current release (run it)
or a Rollback. An agent that starts with an outcome still awaited runs no
service until then (:meth:`CommandRunner.resume`): it never starts a release
its deployment may have abandoned. The service is started and stopped only
through the :class:`~knightwatch.agent.service.ServiceController` the
runner shares with the kill switch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal

from knightwatch.agent.errors import ServiceError
from knightwatch.agent.events import event
from knightwatch.agent.faults import pause_point_async
from knightwatch.agent.garbage import collect_garbage, remove_unused_blobs
from knightwatch.agent.journal import Journal, PendingSwitch, halted_reason
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.procaudit import ServiceIdentity, audit_processes, runs_a_release
from knightwatch.agent.retire import retire_release
from knightwatch.agent.service import ServiceController
from knightwatch.agent.source import ReleaseSource
from knightwatch.agent.staging import Stager
from knightwatch.clock import Clock, SystemClock
from knightwatch.errors import KnightwatchError
from knightwatch.protocol import ReleaseCommand
from knightwatch.protocol.audit import Retire, RetireResult
from knightwatch.protocol.messages import (
    Abort,
    Ack,
    AckPhase,
    Commit,
    Prepare,
    Rollback,
)

__all__ = ["CommandRunner"]

Hold = Callable[[], AbstractAsyncContextManager[None]]
_MAX_REASON = 4096


@dataclass(frozen=True)
class _Switch:
    op: Literal["commit", "rollback"]
    ok: AckPhase
    failed: AckPhase


_COMMIT = _Switch("commit", AckPhase.ACTIVE, AckPhase.COMMIT_FAILED)
_ROLLBACK = _Switch("rollback", AckPhase.ROLLED_BACK, AckPhase.ROLLBACK_FAILED)


class CommandRunner:
    """Carries out commands against the node; one at a time (the caller serialises)."""

    def __init__(
        self,
        *,
        layout: NodeLayout,
        journal: Journal,
        stager: Stager,
        service: ServiceController,
        source: ReleaseSource,
        clock: Clock | None = None,
        audit_hold: Hold | None = None,
        stale_tolerance_s: float = 0.5,
    ) -> None:
        self.clock = clock or SystemClock()
        self.audit_hold: Hold = audit_hold or contextlib.nullcontext
        self.stale_tolerance_s = stale_tolerance_s
        """How much earlier than the last switch a service process may have started (audit)."""
        self.layout = layout
        self.journal = journal
        self.stager = stager
        self.service = service
        """Every start and stop of the service goes through it (shared with the kill switch)."""
        self.source = source
        self.held: int | None = None
        """The deployment whose outcome the service waits for (set by resume, None once told)."""
        self.garbage_after: int | None = None
        """The deployment whose commit left garbage to collect (see :meth:`collect_garbage`)."""

    async def run(self, command: ReleaseCommand) -> Ack | RetireResult:
        """Carry out ``command`` and return its answer (never raises for failures)."""
        match command:
            case Prepare():
                return await self.prepare(command)
            case Abort():
                return await self.abort(command)
            case Retire():
                return await self.retire(command)
        async with self.audit_hold():
            answer = await self._run_switch(command)
        self.held = None  # the control plane has spoken: the service is what the command made
        return answer

    async def collect_garbage(self) -> None:
        """Remove what the last commit made unused: after its ack went out, before the next command.

        Collecting before the ack made every commit wait for a walk of the blob
        cache; collecting concurrently with the next command could remove the
        blobs a Prepare has just fetched, so the command worker runs this
        between the two.
        """
        owed, self.garbage_after = self.garbage_after, None
        if owed is not None:
            await collect_garbage(self.layout, self.journal, self.stager, owed)

    async def _run_switch(self, command: Commit | Rollback) -> Ack:
        if (halted := halted_reason(self.journal.state)) is not None:
            failed = _COMMIT.failed if isinstance(command, Commit) else _ROLLBACK.failed
            return _ack(command, failed, halted)
        match command:
            case Commit(restage=True):
                return await self.swap_restaged(command)
            case Commit():
                return await self._switch(command, _COMMIT)
            case Rollback(digest=None):
                return await self.deactivate(command)
            case Rollback():
                return await self._switch(command, _ROLLBACK)

    async def prepare(self, command: Prepare) -> Ack:
        """Stage and verify a release without switching to it (restage: build it afresh)."""
        current = self.journal.state.current
        protected = frozenset({current} if current else set())
        restage = command.restage and self.layout.release_dir(command.digest).is_dir()
        try:
            if restage:
                staged = await asyncio.to_thread(
                    self.stager.restage,
                    self.source,
                    command.digest,
                    release_id=command.release_id,
                )
            else:
                staged = await asyncio.to_thread(
                    self.stager.prepare,
                    self.source,
                    command.digest,
                    release_id=command.release_id,
                    protected=protected,
                )
        except KnightwatchError as exc:
            return _ack(command, AckPhase.PREPARE_FAILED, exc.message)
        state = self.journal.state
        if command.digest not in (state.current, state.previous):
            self.journal.update(
                staged=sorted({*state.staged, command.digest}),
                staged_for={**state.staged_for, command.digest: command.deployment_id},
            )
        event(
            "release-staged",
            release=staged.manifest.release_id,
            reused=staged.reused,
            blobs_fetched=staged.blobs_fetched,
            files_hashed=staged.files_hashed,
        )
        return _ack(command, AckPhase.PREPARED)

    async def deactivate(self, command: Rollback) -> Ack:
        """Roll back to no release: stop the service and remove ``current``.

        What a node that had nothing before a failed first deployment returns to.
        """
        state = self.journal.state
        await self.service.stop()
        try:
            self.layout.clear_current()
        except KnightwatchError as exc:
            return _ack(command, AckPhase.ROLLBACK_FAILED, exc.message)
        self.journal.update(
            current=None, previous=None, pending=None, awaiting=None, switched_at=self._now()
        )
        event("switched", op="rollback", to="nothing", previous=state.current)
        return _ack(command, AckPhase.ROLLED_BACK)

    async def swap_restaged(self, command: Commit) -> Ack:
        """Reconcile: stop everything under the root, swap the fresh tree in, restart, check."""
        digest = command.digest
        if not self.layout.restaged_dir(digest).is_dir():
            if self.layout.release_dir(digest).is_dir():
                return await self._switch(command, _COMMIT)  # the node was behind: a plain switch
            return _ack(command, AckPhase.COMMIT_FAILED, "no restaged tree (the agent restarted?)")
        state = self.journal.state
        self.journal.update(
            pending=PendingSwitch(
                op="commit",
                digest=digest,
                from_digest=state.current,
                deployment_id=command.deployment_id,
            )
        )
        await self.service.stop()
        stopped = await self.service.stop_strays(state.current)
        try:
            await asyncio.to_thread(self.layout.swap_in_restaged, digest)
            self.layout.switch_current(digest)
        except (OSError, KnightwatchError) as exc:
            self.journal.update(pending=None)
            detail = exc.message if isinstance(exc, KnightwatchError) else str(exc)
            return _ack(command, AckPhase.COMMIT_FAILED, f"cannot swap the tree in: {detail}")
        previous = state.previous if state.current == digest else state.current
        self.journal.update(
            current=digest,
            previous=previous,
            staged=[d for d in state.staged if d != digest],
            staged_for={d: n for d, n in state.staged_for.items() if d != digest},
            pending=None,
            awaiting=command.deployment_id,
            switched_at=self._now(),
        )
        event("reconciled", release=command.release_id, processes_stopped=len(stopped))
        reason = await self.service.start(digest, smoke=True)
        if reason is None:
            reason = await self._processes_left(digest)
        return _ack(command, AckPhase.COMMIT_FAILED if reason else AckPhase.ACTIVE, reason)

    async def _processes_left(self, digest: str) -> str | None:
        """Why the node is still drifted after a reconcile: what the process audit still finds.

        A reconcile that leaves drift behind (a process it could not stop, or
        one started again meanwhile) must not be acknowledged ACTIVE.
        """
        record = self.service.supervisor.record()
        service = ServiceIdentity(pgid=record.pid, digest=record.digest) if record else None
        found = await asyncio.to_thread(
            audit_processes,
            self.layout.root,
            digest,
            service,
            self.journal.state.switched_at,
            tolerance_s=self.stale_tolerance_s,
        )
        if not found:
            return None
        named = "; ".join(f.detail for f in found[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        return f"the reconcile left {len(found)} flagged process(es) running: {named}{more}"

    async def retire(self, command: Retire) -> RetireResult:
        """Delete a retired release from this node and verify that it is gone."""
        state = self.journal.state
        if command.digest in (state.current, state.previous):
            role = "active" if command.digest == state.current else "rollback target"
            return RetireResult(
                retirement_id=command.retirement_id,
                digest=command.digest,
                absent=False,
                detail=f"refused: it is this node's {role}",
            )
        await self.service.stop_strays(state.current, only=lambda f: f.release == command.digest)
        result = await asyncio.to_thread(retire_release, self.layout, command)
        self.journal.update(
            staged=[d for d in state.staged if d != command.digest],
            staged_for={d: n for d, n in state.staged_for.items() if d != command.digest},
        )
        if result.absent:
            await asyncio.to_thread(remove_unused_blobs, self.layout, self.stager)
        return result

    async def abort(self, command: Abort) -> Ack:
        """Remove a staged release unless it is current, previous or staged by a later deployment.

        (An abort the control plane re-sends on reconnect for an old deployment
        must not remove the same release staged again since, for a newer one.)
        """
        state = self.journal.state
        digest = command.digest
        later = state.staged_for.get(digest, 0) > command.deployment_id
        if digest in (state.current, state.previous) or later:
            return _ack(command, AckPhase.ABORTED)
        reason = None
        try:
            await asyncio.to_thread(self.layout.remove_release, digest)
        except OSError as exc:
            reason = f"the staged tree could not be removed: {exc.strerror or exc}"
        staged_for = {d: n for d, n in state.staged_for.items() if d != digest}
        self.journal.update(staged=[d for d in state.staged if d != digest], staged_for=staged_for)
        return _ack(command, AckPhase.ABORTED, reason)

    async def resume(self) -> None:
        """At agent start: adopt (or stop) a service an earlier run left, then run the current one.

        A left service proven to be the active release's is adopted and
        health-checked like a fresh start (:meth:`ServiceController.take_over`);
        one that fails its checks is restarted. Not while the deployment that
        switched ``current`` has an outcome this node has not learned: then
        the service waits (:attr:`held`) for the control plane's word, which
        comes as the first command after connecting.
        """
        adopted = False
        if self.journal.state.service is not None:
            adopted = await self.service.take_over(self.journal.state.service)
        state = self.journal.state
        await self.service.stop_strays(state.current, only=runs_a_release)
        if state.halted:  # the kill-switch latch survives agent restarts
            await self.service.stop(halted=True)
            return
        if state.current is None:
            return
        if state.awaiting is not None:
            self.held = state.awaiting
            event(
                "service-held",
                release=state.current,
                deployment=state.awaiting,
                reason="the outcome of the deployment that switched to it is not known yet; "
                "waiting for the control plane's decision",
            )
            return
        if adopted and await self.service.check_adopted() is None:
            return
        reason = await self.service.start(state.current, smoke=False)
        if reason is not None:
            event("service-unhealthy", release=state.current, reason=reason)

    async def start_current(self) -> str | None:
        """Start the active release's service, health- and smoke-checked (after a re-arm).

        Not while the deployment that switched ``current`` has an outcome this
        node has not learned (:attr:`held`): a re-arm must not start a release
        that deployment may have abandoned. The reason comes back instead.
        """
        current = self.journal.state.current
        if current is None:
            return None
        awaiting = self.journal.state.awaiting
        if awaiting is not None:
            self.held = awaiting
            return (
                f"held: the outcome of deployment {awaiting}, which switched to this release, "
                "is not known yet; the service starts when the control plane decides"
            )
        async with self.audit_hold():
            return await self.service.start(current, smoke=True)

    # --- switching -----------------------------------------------------------------------

    async def _switch(self, command: Commit | Rollback, how: _Switch) -> Ack:
        digest = command.digest
        assert digest is not None  # a rollback to nothing is deactivate()
        state = self.journal.state
        if state.current == digest:
            reason = await self.service.ensure_healthy(digest)
            if reason is None and self.journal.state.awaiting is not None:
                self.journal.update(awaiting=None)  # told to run it (or back on it): settled
            return _ack(command, how.failed if reason else how.ok, reason)
        try:
            manifest = self.stager.load_manifest(digest)
            if not self.layout.release_dir(digest).is_dir():
                raise ServiceError(f"release {digest[:12]}… is not staged on this node")
            launch = self.service.launch_for(manifest)
            if launch is not None:
                launch.argv(launch.spec.command)  # refuse unknown ${KNIGHTWATCH_*} before switching
                launch.environment()
        except KnightwatchError as exc:
            return _ack(command, how.failed, exc.message)
        pending = PendingSwitch(
            op=how.op,
            digest=digest,
            from_digest=state.current,
            deployment_id=command.deployment_id,
        )
        self.journal.update(pending=pending)
        await self.service.stop()
        try:
            self.layout.switch_current(digest)
        except KnightwatchError as exc:
            self.journal.update(pending=None)
            return _ack(command, how.failed, exc.message)
        self.journal.update(
            current=digest,
            previous=state.current,
            staged=[d for d in state.staged if d != digest],
            staged_for={d: n for d, n in state.staged_for.items() if d != digest},
            pending=None,
            awaiting=command.deployment_id if how is _COMMIT else None,
            switched_at=self._now(),
        )
        event("switched", op=how.op, to=manifest.release_id, previous=state.current)
        await pause_point_async(how.op)
        reason = await self.service.start(digest, smoke=True)
        if reason is None and how is _COMMIT:
            self.garbage_after = command.deployment_id  # collected once the ack is out
        return _ack(command, how.failed if reason else how.ok, reason)

    # --- helpers --------------------------------------------------------------------------

    def _now(self) -> float:
        return self.clock.now().timestamp()


def _ack(
    command: Prepare | Commit | Rollback | Abort, phase: AckPhase, reason: str | None = None
) -> Ack:
    if reason is not None:
        reason = " ".join(reason.split())[:_MAX_REASON]
    return Ack(
        deployment_id=command.deployment_id, digest=command.digest, phase=phase, reason=reason
    )
