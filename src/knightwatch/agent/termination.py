"""Stopping processes: a service's process group, a set of pids, the strays of the releases.

Every way the agent ends a process is here, and each is the same sequence:
the release's halt hook (when there is one), its halt signal, the grace
period, then SIGKILL of whatever is left — and each returns only once none
of the processes lives (or after the kill wait). A pid is never signalled on
its own say-so: a group is signalled by its pgid, and a single process only
while its start time is still the one recorded, so a reused pid is left
alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

from knightwatch.agent.cgroup import ServiceCgroup
from knightwatch.agent.checks import run_command
from knightwatch.agent.childwatch import ServiceProcess
from knightwatch.agent.events import event
from knightwatch.agent.procaudit import ProcessFinding, ServiceIdentity, audit_processes
from knightwatch.agent.process import group_alive, read_stat, signal_group, signal_number
from knightwatch.agent.runenv import ServiceLaunch
from knightwatch.bundle.spec import HaltSpec

__all__ = ["stop_strays", "terminate_cgroup", "terminate_group", "terminate_processes"]

_POLL_S = 0.05
_KILL_WAIT_S = 10.0
_KILL_AGAIN_S = 0.2
_STRAY_ROUNDS = 3


async def terminate_group(
    pgid: int,
    halt: HaltSpec,
    launch: ServiceLaunch | None,
    *,
    leader: ServiceProcess | None = None,
) -> None:
    """Hook, halt signal to the group, grace, SIGKILL; return once no process of it lives.

    With the watched service as ``leader``, its exit (reaped by waitpid, or
    seen through its pidfd) is awaited first, so a service that stops at once
    costs one /proc scan, not a poll.
    """
    await _run_hook(halt, launch)
    signal_group(pgid, signal_number(halt.signal))
    grace_ends = asyncio.get_running_loop().time() + halt.grace_s
    if leader is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(leader.wait(), halt.grace_s)
    left = max(0.0, grace_ends - asyncio.get_running_loop().time())
    if await _wait_group_gone(pgid, left):
        return
    event("service-kill", pgid=pgid, grace_s=halt.grace_s)
    signal_group(pgid, signal.SIGKILL)
    await _wait_group_gone(pgid, _KILL_WAIT_S)


async def terminate_cgroup(
    group: ServiceCgroup, halt: HaltSpec, launch: ServiceLaunch | None
) -> bool:
    """Hook, halt signal to every member, grace, then freeze and kill; True once it is empty.

    The group's membership is the kernel's, so a worker that double-forked
    or left the session is in it all the same; frozen, none can fork or
    escape before the kill. An empty group (no member left, zombies
    included) is the moment the service is gone.
    """
    await _run_hook(halt, launch)
    group.signal(signal_number(halt.signal))
    if await _wait_empty(group, halt.grace_s):
        return True
    event("service-kill", cgroup=str(group.path), grace_s=halt.grace_s)
    deadline = asyncio.get_running_loop().time() + _KILL_WAIT_S
    while asyncio.get_running_loop().time() < deadline:
        group.kill()  # again: on v1 a fork racing the freeze may add a member after the read
        if await _wait_empty(group, _KILL_AGAIN_S):
            return True
    return False


async def _run_hook(halt: HaltSpec, launch: ServiceLaunch | None) -> None:
    """Run the release's halt hook, if it has one (block new orders, cancel working ones)."""
    if halt.hook is not None and launch is not None:
        status, output = await run_command(
            launch.argv(halt.hook),
            cwd=os.fspath(launch.release_dir),
            env=launch.environment(),
            timeout_s=halt.grace_s,
        )
        event("halt-hook", status=status, output=output or None)


async def _wait_empty(group: ServiceCgroup, timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while group.members():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL_S / 5)
    return True


async def terminate_processes(family: dict[int, int], halt: HaltSpec) -> None:
    """Halt signal to each process of ``family`` (pid: start ticks), grace, then SIGKILL.

    Return once none of them lives (or after the kill wait). A pid whose start
    time differs is another process now, and is never signalled.
    """
    loop = asyncio.get_running_loop()
    for how, wait_s in ((signal_number(halt.signal), halt.grace_s), (signal.SIGKILL, _KILL_WAIT_S)):
        left = {pid: ticks for pid, ticks in family.items() if _same_alive(pid, ticks)}
        if not left:
            return
        if how == signal.SIGKILL:
            event("service-kill", pids=sorted(left), grace_s=halt.grace_s)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, how)
        deadline = loop.time() + wait_s
        while any(_same_alive(pid, ticks) for pid, ticks in left.items()):
            if loop.time() >= deadline:
                break
            await asyncio.sleep(_POLL_S)


async def stop_strays(
    root: Path,
    current: str | None,
    *,
    only: Callable[[ProcessFinding], bool] | None = None,
    service: ServiceIdentity | None = None,
) -> list[ProcessFinding]:
    """Stop every process the process audit flags under ``root`` (those ``only`` accepts).

    The predicate is the audit's own (:func:`audit_processes`, with the
    same ``service`` — its cgroup members are never strays), so whatever
    the audit calls an unmanaged process — running from ROOT, mapping a
    release's code, or an interpreter started on a release script from
    anywhere — is stopped, and nothing else: each flagged process by its
    pid and start time (a reused pid is left alone), halt signal, grace,
    SIGKILL. A process that leaves another behind as it stops is found
    by the next look, up to a few rounds. Return what was stopped.
    """
    stopped: list[ProcessFinding] = []
    for _ in range(_STRAY_ROUNDS):
        found = await asyncio.to_thread(audit_processes, root, current, service, None)
        found = [f for f in found if only is None or only(f)]
        if not found:
            break
        for finding in found:
            event("service-stray", pid=finding.pid, detail=finding.detail, action="stop")
        await terminate_processes({f.pid: f.start_ticks for f in found}, HaltSpec())
        stopped.extend(found)
    return stopped


async def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while group_alive(pgid):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


def _same_alive(pid: int, start_ticks: int) -> bool:
    """Whether ``pid`` is still the live (non-zombie) process that started at ``start_ticks``."""
    stat = read_stat(pid)
    return stat is not None and not stat.dead and stat.start_ticks == start_ticks
