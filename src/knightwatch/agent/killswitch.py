"""The agent's side of the kill switch: a latch in the journal, and the dead man's switch (P5).

:meth:`KillSwitch.halt` writes the latch to ``state.json`` *first* (so a
crash or reboot at any instant leaves the node halted), then stops the
service — its halt hook, the halt signal to its process group, SIGKILL
after the grace time, and the same for any of its workers that left the
group — and answers with timestamps taken once waitpid reaped the service
and none of its processes is left. Two seconds later (after the fleet's
halt wave, whose CPU it would otherwise share) it also stops any process
group still running from the releases that nobody supervises (a crash's or
a race's leftover). While the latch is set
nothing starts the service: not a commit, not a rollback, not an agent
restart. :meth:`KillSwitch.rearm` clears it and starts the active release's
service again with the usual health checks. The latch and the stop are the
:class:`~knightwatch.agent.service.ServiceController`'s, which the command
runner shares: a halt never interleaves with a start.

The dead man's switch (:meth:`KillSwitch.watch_link`): on a node of an
``armed`` group (the server says so in its ``Hello``; the agent keeps it in
the journal, so it holds across restarts with no control plane), an agent
that has been without the control plane for longer than T halts its
service by itself, with source ``dead-man`` and a reason naming how long,
and reports it when it reconnects.

    armed ──halt (kill | dead-man | guard)──► halted ──rearm──► armed
             journal first, then stop          latched across restarts
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from knightwatch.agent.events import event
from knightwatch.agent.journal import Journal
from knightwatch.agent.service import HaltCause, ServiceController
from knightwatch.clock import Clock
from knightwatch.protocol.messages import Hello
from knightwatch.protocol.safety import HaltAck, HaltSource, HaltState, RearmAck

__all__ = ["DEAD_MAN_POLL_S", "STRAY_SWEEP_DELAY_S", "HaltResult", "KillSwitch"]

DEAD_MAN_POLL_S = 0.1
UNARMED_POLL_S = 1.0  # not armed: only a new Hello (which may arm the node) is looked for
STRAY_SWEEP_DELAY_S = 2.0
_MAX_TEXT = 4096

StartService = Callable[[], Awaitable[str | None]]
"""Start the active release's service with its checks; None once healthy, else why not."""


@dataclass(frozen=True)
class HaltResult:
    """What one halt did: when it was asked, when the service was gone, which pids stopped."""

    source: HaltSource
    received_at: datetime
    halted_at: datetime
    stopped_pids: tuple[int, ...]
    detail: str

    def ack(self, halt_id: int) -> HaltAck:
        """The acknowledgement of the control plane's halt ``halt_id``."""
        return HaltAck(
            halt_id=halt_id,
            received_at=self.received_at,
            halted_at=self.halted_at,
            stopped_pids=list(self.stopped_pids[:1024]),
            detail=self.detail[:_MAX_TEXT],
        )


class KillSwitch:
    """The node's halt latch: set it, lift it, and set it by itself when the link is lost."""

    def __init__(
        self,
        *,
        journal: Journal,
        service: ServiceController,
        clock: Clock,
        start_service: StartService,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._journal = journal
        self._service = service
        """Shared with the command runner: it sets the latch and stops the service."""
        self._clock = clock
        self._start_service = start_service
        self._on_change = on_change
        self._sweeps: set[asyncio.Task[None]] = set()

    @property
    def halted(self) -> bool:
        """True while the latch is set."""
        return self._service.halted

    def state(self) -> HaltState:
        """The latch as every report carries it."""
        state = self._journal.state
        if not state.halted:
            return HaltState()
        since = state.halted_since
        return HaltState(
            halted=True,
            source=state.halt_source,
            halt_id=state.halt_id,
            since=datetime.fromtimestamp(since, UTC) if since is not None else None,
            reason=state.halt_reason,
        )

    async def halt(
        self,
        source: HaltSource,
        reason: str,
        halt_id: int | None = None,
        *,
        received_at: datetime | None = None,
        announce: bool = True,
    ) -> HaltResult:
        """Set the latch (journal first), stop the service and all it left; return the timings.

        Halting a halted node keeps the first cause (source, reason, since),
        records the control plane's ``halt_id`` and makes sure nothing runs.
        ``announce=False`` when the caller acknowledges at once: the
        acknowledgement carries the node's state, so no report of its own.
        """
        received = received_at or self._clock.now()
        reason = " ".join(reason.split())[:_MAX_TEXT]
        cause = HaltCause(source, reason, halt_id, since=received.timestamp())
        halted = await self._service.halt(cause)
        self._sweep_strays_later()
        already, pids, halted_at = halted.already, halted.stopped.pids, halted.stopped.gone_at
        since = self._journal.state.halted_since
        if already and not pids and since is not None:
            halted_at = datetime.fromtimestamp(since, UTC)  # gone since the first halt
        detail = _describe_halt(pids, already, self._journal.state.halt_source or source)
        event(
            "halted",
            source=source,
            halt=halt_id,
            pids=list(pids),
            ms=(halted_at - received).total_seconds() * 1000,
        )
        if announce:
            self._changed()
        return HaltResult(source, received, halted_at, pids, detail)

    async def rearm(self, halt_id: int, reason: str) -> RearmAck:
        """Lift the latch and start the active release's service again, checked as usual."""
        was = await self._service.lift_halt()
        rearmed_at = self._clock.now()
        event("rearm", halt=halt_id, reason=reason[:_MAX_TEXT], was_halted=was.halted)
        self._changed()
        if not was.halted:
            return RearmAck(halt_id=halt_id, rearmed_at=rearmed_at, started=False, detail="")
        if was.current is None:
            self._service.forget()
            detail = "no release is active: nothing to start"
            return RearmAck(halt_id=halt_id, rearmed_at=rearmed_at, started=False, detail=detail)
        why = await self._start_service()
        self._changed()
        status = self._service.status()
        detail = why or f"service {status.state.value}, pid {status.pid}"
        event("rearmed", halt=halt_id, started=why is None, detail=detail)
        return RearmAck(
            halt_id=halt_id, rearmed_at=rearmed_at, started=why is None, detail=detail[:_MAX_TEXT]
        )

    # --- the dead man's switch -------------------------------------------------------------

    def arm_dead_man(self, seconds: float | None) -> None:
        """Keep the server's dead-man period (None: this node is not armed) in the journal."""
        if self._journal.state.dead_man_s != seconds:
            self._journal.update(dead_man_s=seconds)
            event("dead-man-armed" if seconds else "dead-man-disarmed", seconds=seconds)

    async def watch_link(
        self, last_heard: Callable[[], float | None], hello: Callable[[], Hello | None]
    ) -> None:
        """Halt by the dead man's switch once the server has been silent longer than T; forever.

        ``last_heard`` is the monotonic time of the server's last message or
        pong (None before the first), so a link that died silently counts as
        lost from its last sign of life, not from when TCP gives up. T is the
        journal's ``dead_man_s`` (refreshed from every ``Hello``), so an
        agent restarted with no control plane still halts T after it started.
        """
        started = self._clock.monotonic()
        greeted: Hello | None = None
        while True:
            current = hello()
            if current is not None and current is not greeted:
                greeted = current
                self.arm_dead_man(current.dead_man_s)
            heard = last_heard()
            silent = self._clock.monotonic() - (heard if heard is not None else started)
            limit = self._journal.state.dead_man_s
            if limit is not None and not self.halted and silent > limit:
                await self.halt(
                    HaltSource.DEAD_MAN,
                    f"lost the control plane for {silent:.1f} s "
                    f"(dead man's switch after {limit:g} s)",
                )
            await asyncio.sleep(DEAD_MAN_POLL_S if limit is not None else UNARMED_POLL_S)

    # --- helpers ---------------------------------------------------------------------------

    def _sweep_strays_later(self) -> None:
        """Off the critical path (every agent of the fleet halts at once), stop the strays too."""
        sweep = asyncio.create_task(self._sweep_strays())
        self._sweeps.add(sweep)
        sweep.add_done_callback(self._sweeps.discard)

    async def _sweep_strays(self) -> None:
        """Stop processes running a release that nobody supervises (left by a crash or race)."""
        await asyncio.sleep(STRAY_SWEEP_DELAY_S)
        strays = await self._service.stop_strays_while_halted()
        if strays:
            event("halt-strays", pids=[f.pid for f in strays])
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


def _describe_halt(pids: tuple[int, ...], already: bool, source: str) -> str:
    if pids:
        listed = ", ".join(map(str, pids[:20])) + (" …" if len(pids) > 20 else "")
        prefix = f"already halted ({source}); " if already else ""
        return f"{prefix}stopped {len(pids)} process(es): {listed}"
    if already:
        return f"already halted ({source}): nothing was running"
    return "nothing was running"
