"""The continuous configuration audit of one node (P2: know what runs).

Physical (:class:`~knightwatch.agent.treeaudit.TreeAudit`): the active tree
is watched with inotify and every changed path is re-hashed at once; a stat
sweep every few seconds catches events inotify lost, and a full re-hash runs
on a schedule and whenever the watcher reports lost events. ``current``
itself is watched and re-read. Processes: the supervised service and
anything else running from the agent's root are checked every second.
Functional: health, smoke and version checks re-run on a schedule. An
operator's audit (:meth:`Auditor.audit_now`) does all of it at once.

Every change of the findings calls ``on_change`` so the agent reports it at
once. While a command switches releases the audit is held (a switch is not
drift), and the new tree is fully re-checked afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from pathlib import Path

from knightwatch.agent.events import event, logger
from knightwatch.agent.functional import functional_checks
from knightwatch.agent.journal import Journal
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.procaudit import audit_processes
from knightwatch.agent.settings import AuditSettings
from knightwatch.agent.staging import Stager
from knightwatch.agent.supervisor import Supervisor
from knightwatch.agent.treeaudit import TreeAudit
from knightwatch.agent.watcher import WatchBatch, watch_current_link, watch_tree
from knightwatch.clock import Clock
from knightwatch.protocol.audit import (
    MAX_FINDINGS_IN_HEARTBEAT,
    MAX_FINDINGS_IN_RESULT,
    AuditRequest,
    AuditResult,
    AuditStatus,
    CheckOutcome,
    Finding,
    FindingKind,
    Severity,
)

__all__ = ["Auditor", "rank"]

K, V = FindingKind, Severity
_SEVERITY_ORDER = {V.CRITICAL: 0, V.WARNING: 1, V.INFO: 2}


def rank(findings: Iterable[Finding]) -> list[Finding]:
    """Sort findings most severe first, then by kind and path."""
    return sorted(
        findings,
        key=lambda f: (_SEVERITY_ORDER[f.severity], f.kind.value, f.path or "", f.pid or 0),
    )


class Auditor:
    """Watches, sweeps and checks the node; holds the findings as of now."""

    def __init__(
        self,
        *,
        layout: NodeLayout,
        journal: Journal,
        stager: Stager,
        supervisor: Supervisor,
        clock: Clock,
        settings: AuditSettings | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.layout = layout
        self.journal = journal
        self.stager = stager
        self.supervisor = supervisor
        self.clock = clock
        self.settings = settings or AuditSettings()
        self.on_change = on_change
        self.tree = TreeAudit(layout=layout, stager=stager, clock=clock)
        """The physical audit of the active release's tree."""
        self._current_link: list[Finding] = []
        self._processes: list[Finding] = []
        self._functional: list[Finding] = []
        self._watching = False
        self._last_process: datetime | None = None
        self._last_functional: datetime | None = None
        self._lock = asyncio.Lock()
        self._held = 0
        self._resync = asyncio.Event()
        self._published: frozenset[Finding] = frozenset()

    # --- what the agent reports ----------------------------------------------------------

    def findings(self) -> list[Finding]:
        """Every finding as of now, most severe first."""
        found = [*self._current_link, *self.tree.findings(), *self._processes, *self._functional]
        return rank(found)

    def status(self) -> AuditStatus:
        """The audit status carried by every report."""
        findings = self.findings()
        index = self.tree.index
        return AuditStatus(
            release=index.digest if index else None,
            watching=self._watching,
            files=len(index.files) if index else 0,
            last_sweep_at=self.tree.last_sweep,
            last_process_check_at=self._last_process,
            last_functional_check_at=self._last_functional,
            findings=findings[:MAX_FINDINGS_IN_HEARTBEAT],
            total=len(findings),
        )

    def _publish(self) -> None:
        now = frozenset(self.findings())
        if now != self._published:
            added = now - self._published
            self._published = now
            event(
                "drift-changed",
                findings=len(now),
                new=[f.detail for f in rank(added)][:5],
            )
            self.on_change()

    # --- holding during switches ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Pause the audit while a command changes the active release; re-check after."""
        self._held += 1
        try:
            async with self._lock:
                yield
        finally:
            self._held -= 1
            self._resync.set()

    # --- the loops -----------------------------------------------------------------------

    async def run(self) -> None:
        """Run every part of the audit until cancelled."""
        await self._follow_release()
        tasks = [
            self._release_loop(),
            self._watch_current_loop(),
            self._periodic(self.settings.stat_interval_s, self._stat_sweep),
            self._periodic(self.settings.sweep_interval_s, self._full_sweep),
            self._periodic(self.settings.process_interval_s, self._check_processes),
            self._periodic(self.settings.functional_interval_s, self._check_functional),
        ]
        await asyncio.gather(*tasks)

    async def _periodic(self, interval_s: float, step: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if self._held:
                continue
            try:
                result = step()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # one failed check must not stop the audit
                logger.exception("audit-step-failed")

    async def _release_loop(self) -> None:
        """Follow the active release: a new one is indexed, fully checked, then watched."""
        watcher: asyncio.Task[None] | None = None
        while True:
            if watcher is None or watcher.done():
                watcher = self._start_watcher()
            try:
                await asyncio.wait_for(self._resync.wait(), timeout=1.0)
                asked = True
            except TimeoutError:
                asked = False  # the once-a-second look at ``current``
            if self._held:
                continue
            self._resync.clear()
            if await self._follow_release():
                if watcher is not None:
                    watcher.cancel()
                watcher = None
            else:
                if asked:  # after a hold (a switch) or a failed watcher: what changed meanwhile
                    await self._stat_sweep()
                self._check_current()
                self._publish()

    def _start_watcher(self) -> asyncio.Task[None] | None:
        tree = self.tree.release_dir
        return asyncio.create_task(self._watch(tree)) if tree is not None else None

    async def _watch(self, tree: Path) -> None:
        try:
            self._watching = True
            self.on_change()
            async for batch in watch_tree(
                tree,
                debounce_ms=self.settings.watch_debounce_ms,
                step_ms=self.settings.watch_step_ms,
                flood_paths=self.settings.flood_paths,
            ):
                await self._on_batch(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the watcher died: events may be lost
            self.tree.forget_proofs()
            event("watcher-failed", tree=str(tree), detail=str(exc)[:200])
            await asyncio.sleep(1.0)
            self._resync.set()
        finally:
            self._watching = False

    async def _on_batch(self, batch: WatchBatch) -> None:
        if batch.lost:
            self.tree.forget_proofs()
            event("watch-events-lost", paths=len(batch.paths), action="full re-hash")
            await self._full_sweep()
            return
        async with self._lock:
            if await self.tree.recheck(batch.paths) is None:
                return
        self._publish()

    async def _watch_current_loop(self) -> None:
        while True:
            try:
                async for _ in watch_current_link(self.layout.root):
                    if not self._held:
                        self._check_current()
                        self._publish()
            except Exception as exc:
                event("watcher-failed", tree=str(self.layout.root), detail=str(exc)[:200])
                await asyncio.sleep(1.0)

    # --- physical audit --------------------------------------------------------------------

    async def _follow_release(self) -> bool:
        """Index and fully check the active release if it changed; True if it did."""
        digest = self.journal.state.current
        if self.tree.follows(digest):
            return False
        async with self._lock:
            await self.tree.load(digest)
            self._check_current()
        self._publish()
        return True

    async def _full_sweep(self) -> None:
        async with self._lock:
            inspection = await self.tree.sweep()
        if inspection is None:
            return
        event("audit-sweep", files=inspection.files_hashed, bytes=inspection.bytes_hashed)
        self._publish()

    async def _stat_sweep(self) -> None:
        """Re-check every path whose stat changed since it was last inspected."""
        async with self._lock:
            changed = await self.tree.sweep_changed()
        if changed:
            self._publish()

    def _check_current(self) -> None:
        wanted = self.journal.state.current
        try:
            target: str | None = os.readlink(self.layout.current)
        except OSError:
            target = None
        expected = f"releases/{wanted}" if wanted else None
        found: list[Finding] = []
        if target != expected and not (
            wanted and target == os.fspath(self.layout.release_dir(wanted))
        ):
            found.append(
                Finding(
                    kind=K.CURRENT,
                    severity=V.CRITICAL,
                    path="current",
                    detail=f"current points at {target or 'nothing'}, "
                    f"the active release is {expected or 'none'}",
                    expected=expected,
                    actual=target,
                )
            )
        self._current_link = found

    # --- processes -------------------------------------------------------------------------

    async def _check_processes(self) -> int:
        service = self.supervisor.identity()
        state = self.journal.state
        found = await asyncio.to_thread(
            audit_processes,
            self.layout.root,
            state.current,
            service,
            state.switched_at,
            tolerance_s=self.settings.stale_tolerance_s,
        )
        if self._held:
            return len(found)
        self._processes = [
            Finding(kind=K(item.kind), severity=V.CRITICAL, detail=item.detail[:2000], pid=item.pid)
            for item in found
        ]
        self._last_process = self.clock.now()
        self._publish()
        return len(found)

    # --- functional audit ------------------------------------------------------------------

    async def _check_functional(self) -> list[CheckOutcome]:
        manifest = self.tree.index.manifest if self.tree.index else None
        outcomes, findings = await functional_checks(
            self.supervisor, self.journal.state.current, manifest
        )
        if not self._held:
            self._functional = findings
            self._last_functional = self.clock.now()
            self._publish()
        return outcomes

    # --- on demand -------------------------------------------------------------------------

    async def audit_now(self, request: AuditRequest) -> AuditResult:
        """Re-hash every file, check processes, run the functional checks; return it all."""
        started = self.clock.now()
        await self._follow_release()
        files = bytes_hashed = 0
        async with self._lock:
            inspection = await self.tree.sweep()
            if inspection is not None and self.tree.index is not None:
                files, bytes_hashed = len(self.tree.index.files), inspection.bytes_hashed
            self._check_current()
            absent = self.tree.retired_present(request.absent)
        processes = await self._check_processes()
        checks = await self._check_functional()
        self._publish()
        findings = rank([*self.findings(), *absent])
        return AuditResult(
            audit_id=request.audit_id,
            release=self.tree.digest,
            started_at=started,
            finished_at=self.clock.now(),
            files=files,
            bytes_hashed=bytes_hashed,
            processes_checked=processes,
            checks=checks,
            findings=findings[:MAX_FINDINGS_IN_RESULT],
            total=len(findings),
        )
