"""Supervising the active release's service: start, health, restart on crash, halt.

The service runs in its own session (process group), with its output
appended to ``ROOT/logs/service.log``, so it outlives an agent that is
killed. A crash is restarted after a back-off that doubles from 0.5 s to
30 s; five crashes within 60 s is a *crash loop*, reported as such (state
``crash_loop`` with the count and last exit in ``detail``) while restarts go
on at the slow pace. Stopping runs the halt hook, signals the group, waits
the grace period and then kills whatever is left of the group
(:mod:`knightwatch.agent.termination`).

A service an earlier agent left running, once proven to be the active
release's (:mod:`knightwatch.agent.adoption`), is *adopted*
(:meth:`Supervisor.adopt`): watched through a pidfd
(:mod:`knightwatch.agent.childwatch`), health-checked, restarted and
stopped exactly like one this supervisor spawned.

The agent drives the supervisor through its
:class:`~knightwatch.agent.service.ServiceController`, the one place that
decides when the service starts and stops; whoever wants to follow the
service's state registers with :meth:`Supervisor.listen`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from knightwatch.agent.cgroup import CgroupHost, ServiceCgroup, create_group, remove_empty_groups
from knightwatch.agent.checks import wait_healthy
from knightwatch.agent.childwatch import (
    AdoptedProcess,
    ServiceProcess,
    SpawnedProcess,
    describe_exit,
)
from knightwatch.agent.errors import ServiceError
from knightwatch.agent.events import event
from knightwatch.agent.journal import ServiceRecord
from knightwatch.agent.procaudit import ServiceIdentity
from knightwatch.agent.process import ProcessIdentity, descendants, escaped_groups, identify
from knightwatch.agent.runenv import ServiceLaunch
from knightwatch.agent.servicelog import ServiceLog
from knightwatch.agent.termination import terminate_cgroup, terminate_group
from knightwatch.bundle.spec import HaltSpec
from knightwatch.clock import Clock, SystemClock
from knightwatch.protocol.messages import CgroupStatus, ServiceState, ServiceStatus

__all__ = ["BEST_EFFORT", "RestartPolicy", "Stopped", "Supervisor", "describe_exit"]


BEST_EFFORT = "best effort (no cgroup)"
"""The process accounting of a node whose service cannot have a cgroup."""


@dataclass(frozen=True)
class Stopped:
    """What :meth:`Supervisor.stop` did: when the service was confirmed gone, which pids."""

    gone_at: datetime
    pids: tuple[int, ...]


@dataclass(frozen=True)
class RestartPolicy:
    """How crashes are restarted and when they count as a crash loop."""

    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    crash_window_s: float = 60.0
    crash_loop_threshold: int = 5
    health_timeout_s: float = 30.0
    settle_s: float = 1.0
    """Without a health check, a service is ready once it has stayed up this long."""
    log_check_interval_s: float = 5.0


class Supervisor:
    """Runs at most one service process and reports what it is doing."""

    def __init__(
        self,
        log: ServiceLog,
        *,
        clock: Clock | None = None,
        policy: RestartPolicy | None = None,
        cgroups: CgroupHost | None = None,
        node: str = "node",
    ) -> None:
        """``cgroups``: where each service start gets a group of its own (None: /proc only)."""
        self.log = log
        self.cgroups = cgroups
        self._node = node
        self._group: ServiceCgroup | None = None
        self.policy = policy or RestartPolicy()
        self._clock = clock or SystemClock()
        self._listeners: list[Callable[[], None]] = []
        self._launch: ServiceLaunch | None = None
        self._process: ServiceProcess | None = None
        self._identity: ProcessIdentity | None = None
        self._state = ServiceState.NONE
        self._detail: str | None = None
        self._restarts = 0
        self._crashes: deque[float] = deque()
        self._last_exit: str | None = None
        self._backoff = self.policy.initial_backoff_s
        self._ready: asyncio.Future[str | None] | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self._rotator: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.version: str | None = None
        self.adoption: str | None = None
        """What the agent did at start with the service an earlier agent left (one line)."""

    @property
    def launch(self) -> ServiceLaunch | None:
        """What the supervisor runs (or last ran)."""
        return self._launch

    @property
    def running(self) -> bool:
        """True while a service process is alive."""
        return self._process is not None and self._process.alive

    def status(self) -> ServiceStatus:
        """Return the service as the agent reports it."""
        state, detail = self._state, self._detail
        if state not in (ServiceState.STOPPED, ServiceState.HALTED) and self._crash_loop():
            state = ServiceState.CRASH_LOOP
            detail = (
                f"crashed {len(self._crashes)} times in {self.policy.crash_window_s:g} s "
                f"(last: {self._last_exit}); next restart in {self._backoff:g} s"
            )
        identity = self._identity if self.running else None
        return ServiceStatus(
            accounting=self.cgroups.accounting if self.cgroups else BEST_EFFORT,
            cgroup=self.cgroup_status(),
            state=state,
            pid=identity.pid if identity else None,
            started_at=identity.started_at if identity else None,
            restarts=self._restarts,
            version=self.version,
            detail=detail[:4096] if detail else None,
            adoption=self.adoption[:4096] if self.adoption else None,
        )

    @property
    def group(self) -> ServiceCgroup | None:
        """The cgroup of the current service start (None: none, or cgroups unavailable)."""
        return self._group

    def cgroup_status(self) -> CgroupStatus | None:
        """The service's cgroup as the kernel counts it, for the node's report."""
        if self._group is None:
            return None
        usage = self._group.usage()
        return CgroupStatus(
            path=str(self._group.path),
            members=usage.members,
            memory_bytes=usage.memory_bytes,
            oom_kills=usage.oom_kills,
            pids_limit_hits=usage.pids_limit_hits,
        )

    def identity(self) -> ServiceIdentity | None:
        """The running service for the process audit: its group, release and cgroup members."""
        record = self.record()
        if record is None:
            return None
        members = frozenset(self._group.members()) if self._group is not None else None
        return ServiceIdentity(pgid=record.pid, digest=record.digest, members=members)

    def record(self) -> ServiceRecord | None:
        """Return the journal record naming the running process, if any."""
        if not self.running or self._identity is None or self._launch is None:
            return None
        ident = self._identity
        return ServiceRecord(
            pid=ident.pid,
            start_ticks=ident.start_ticks,
            boot_id=ident.boot_id,
            started_at=ident.started_at,
            digest=self._launch.digest,
            cgroup=str(self._group.path) if self._group is not None else None,
        )

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop) whenever the service's state or launch changes."""
        self._listeners.append(callback)

    async def start(self, launch: ServiceLaunch) -> None:
        """Start ``launch``'s service (stopping any running one first).

        Raise ServiceError if the process cannot be spawned; a process that
        spawns and then dies is restarted, and :meth:`wait_ready` reports it.
        """
        await self.stop()
        self._begin(launch, self._new_group(launch))
        try:
            process = await self._spawn(launch)
        except ServiceError as exc:
            self._state, self._detail = ServiceState.STOPPED, exc.message
            self._notify()
            raise
        self._watcher = asyncio.create_task(self._watch(process, launch))
        self._rotator = asyncio.create_task(self._rotate_logs())

    def adopt(
        self, launch: ServiceLaunch, identity: ProcessIdentity, group: ServiceCgroup | None
    ) -> None:
        """Supervise a service an earlier agent started (proven by the caller) as if spawned.

        Its health is checked as at a start (:meth:`wait_ready`); a crash is
        restarted; :meth:`stop` halts it like a child (hook, signal, grace,
        the group's freeze and kill).
        """
        self._begin(launch, group)
        process = AdoptedProcess(identity)
        self._process = process
        self._identity = identity
        self._state, self._detail = ServiceState.STARTING, None
        self._ready = asyncio.get_running_loop().create_future()
        self._ready_task = asyncio.create_task(self._check_ready(launch, self._ready))
        self._watcher = asyncio.create_task(self._watch(process, launch))
        self._rotator = asyncio.create_task(self._rotate_logs())
        self._notify()

    def _begin(self, launch: ServiceLaunch, group: ServiceCgroup | None) -> None:
        """Start afresh with ``launch`` in ``group``: no restarts, crashes or version yet."""
        self._launch = launch
        self._restarts = 0
        self._crashes.clear()
        self._last_exit = None
        self.version = None
        self._group = group

    async def wait_ready(self) -> str | None:
        """Wait until the current process is healthy (None) or why it is not."""
        if self._ready is None:
            return self._detail or "the service is not running"
        return await asyncio.shield(self._ready)

    async def stop(self, *, halted: bool = False) -> Stopped:
        """Stop the service: halt hook, halt signal, grace period, then SIGKILL of the group.

        A worker that left the group (``setsid``) is stopped the same way
        right after. Return when all of it was confirmed gone (reaped, no
        process left) — now, if nothing ran — taken before any bookkeeping,
        with the pids that were stopped.
        """
        await self.close()
        process, launch = self._process, self._launch
        gone_at = self._clock.now()
        pids: tuple[int, ...] = ()
        group = self._group
        if group is not None and launch is not None and group.members():
            pids = tuple(group.members())
            await terminate_cgroup(group, launch.spec.halt, launch)
            if process is not None:
                await process.wait()
            gone_at = self._clock.now()
            event(
                "service-stopped", cgroup=str(group.path), release=launch.release_id, halted=halted
            )
        elif process is not None and process.alive and launch is not None:
            family = descendants(process.pid)
            await terminate_group(process.pid, launch.spec.halt, launch, leader=process)
            await process.wait()
            for pgid in escaped_groups(family, process.pid):
                event("service-escaped", pgid=pgid, action="stop")
                await terminate_group(pgid, launch.spec.halt, None)
            gone_at = self._clock.now()
            pids = tuple(family)
            event("service-stopped", pid=process.pid, release=launch.release_id, halted=halted)
        self._resolve_ready("the service was stopped")
        if group is not None and group.remove():
            self._group = None
        self._process = None
        self._identity = None
        if launch is not None or halted:
            self._state = ServiceState.HALTED if halted else ServiceState.STOPPED
            self._detail = None
        self._notify()
        return Stopped(gone_at, pids)

    def forget(self) -> None:
        """Stop reporting a release's service (the active release has none); call after stop."""
        self._launch = None
        self.version = None
        self._state, self._detail = ServiceState.NONE, None
        self._notify()

    async def stop_adopted(
        self,
        record: ServiceRecord,
        launch: ServiceLaunch | None,
        group: ServiceCgroup | None = None,
    ) -> bool:
        """Stop a service started by an earlier agent run, if it is still that process.

        The process must have the recorded pid, start time and boot id; a
        reused pid is left alone. Its process group is stopped (hook, signal,
        grace, SIGKILL), then whatever is left in its cgroup ``group`` (frozen
        and killed). Return True if a process was stopped.
        """
        identity = identify(record.pid)
        if identity is None or (identity.start_ticks, identity.boot_id) != (
            record.start_ticks,
            record.boot_id,
        ):
            return False
        halt = launch.spec.halt if launch is not None else HaltSpec()
        event("service-stopping-left-over", pid=record.pid, digest=record.digest)
        await terminate_group(record.pid, halt, launch)
        if group is not None and group.members():
            await terminate_cgroup(group, HaltSpec(), None)
        self.remove_stale_groups()
        return True

    def remove_stale_groups(self) -> None:
        """Remove this node's empty cgroups left by an earlier agent run (not the current one)."""
        if self.cgroups is None:
            return
        for name in remove_empty_groups(self.cgroups, f"{self._node}."):
            event("cgroup-removed", group=name)

    async def close(self) -> None:
        """Cancel the supervisor's background tasks (the service keeps running)."""
        tasks = [self._watcher, self._ready_task, self._rotator]
        self._watcher = self._ready_task = self._rotator = None
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # --- processes -----------------------------------------------------------------------

    async def _spawn(self, launch: ServiceLaunch) -> ServiceProcess:
        argv = launch.argv(launch.spec.command)
        env = launch.environment()
        self.log.rotate_if_needed()
        fd = self.log.open_for_child()
        try:
            os.write(fd, f"--- knightwatch: starting {launch.release_id}\n".encode())
            child = await asyncio.create_subprocess_exec(
                *argv,
                cwd=os.fspath(launch.release_dir),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,
                preexec_fn=self._group.join() if self._group is not None else None,
            )
        except OSError as exc:
            raise ServiceError(
                f"cannot start the service of {launch.release_id} ({argv[0]}): "
                f"{exc.strerror or exc}"
            ) from exc
        finally:
            os.close(fd)
        process = SpawnedProcess(child)
        self._process = process
        self._identity = identify(process.pid)
        self._state, self._detail = ServiceState.STARTING, None
        self._ready = asyncio.get_running_loop().create_future()
        self._ready_task = asyncio.create_task(self._check_ready(launch, self._ready))
        event("service-start", pid=process.pid, release=launch.release_id, restarts=self._restarts)
        self._notify()
        return process

    async def _watch(self, process: ServiceProcess, launch: ServiceLaunch) -> None:
        backoff = self.policy.initial_backoff_s
        while True:
            spawned = self._clock.monotonic()
            how = await process.wait()
            if self._clock.monotonic() - spawned >= self.policy.crash_window_s:
                backoff = self.policy.initial_backoff_s
            self._record_crash(how, launch, backoff)
            while True:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.policy.max_backoff_s)
                self._restarts += 1
                try:
                    process = await self._spawn(launch)
                    break
                except ServiceError as exc:
                    self._record_crash(exc.message, launch, backoff)

    def _record_crash(self, how: str, launch: ServiceLaunch, backoff: float) -> None:
        now = self._clock.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > self.policy.crash_window_s:
            self._crashes.popleft()
        self._last_exit = how
        self._backoff = backoff
        if self._ready_task is not None:
            self._ready_task.cancel()
            self._ready_task = None
        tail = self.log.tail(3)
        reason = f"the service exited ({how}) before it was healthy" + (
            f"; its last output: {tail}" if tail else ""
        )
        self._resolve_ready(reason)
        self._process = None
        self._identity = None
        self._state = ServiceState.STARTING
        self._detail = f"{how}; restart {self._restarts + 1} in {backoff:g} s"
        event(
            "service-exit",
            release=launch.release_id,
            how=how,
            restart_in_s=backoff,
            crash_loop=self._crash_loop(),
        )
        self._notify()

    async def _check_ready(self, launch: ServiceLaunch, ready: asyncio.Future[str | None]) -> None:
        check = launch.spec.health
        reason = None
        if check is None:
            await asyncio.sleep(self.policy.settle_s)
        else:
            reason = await wait_healthy(check, launch, timeout_s=self.policy.health_timeout_s)
        if ready.done():
            return
        if reason is None:
            self._state, self._detail = ServiceState.RUNNING, None
        else:
            self._detail = reason
        ready.set_result(reason)
        self._notify()

    def _new_group(self, launch: ServiceLaunch) -> ServiceCgroup | None:
        """A cgroup for this start, named by node, release digest and start; None without."""
        if self.cgroups is None:
            return None
        stamp = self._clock.now().strftime("%Y%m%dT%H%M%S%f")
        name = f"{self._node}.{launch.digest.removeprefix('sha256:')[:16]}.{stamp}"
        try:
            return create_group(self.cgroups, name, launch.spec.limits)
        except OSError as exc:
            event("cgroup-unavailable", group=name, reason=exc.strerror or str(exc))
            return None

    # --- bookkeeping ---------------------------------------------------------------------

    def _crash_loop(self) -> bool:
        now = self._clock.monotonic()
        recent = [t for t in self._crashes if now - t <= self.policy.crash_window_s]
        return len(recent) >= self.policy.crash_loop_threshold

    def _resolve_ready(self, reason: str) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(reason)

    async def _rotate_logs(self) -> None:
        while True:
            await asyncio.sleep(self.policy.log_check_interval_s)
            if await asyncio.to_thread(self.log.rotate_if_needed):
                event("service-log-rotated", path=str(self.log.path))

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()
