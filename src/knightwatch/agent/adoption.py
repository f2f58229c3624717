"""Is the service an earlier agent left running provably the one it started, and runnable?

An agent that starts (after a SIGKILL, a crash, or an in-place upgrade by
``exec``) finds the journal's ``service`` record. :func:`examine` decides,
from /proc and the cgroup alone, whether the live process is that service
and still the active release's — every proof must hold:

1. the pid is alive, in this boot, and its start time (field 22 of
   ``/proc/PID/stat``) is the journaled one: a reused pid is another process;
2. it runs from this agent's root (cwd or executable), or is in one of
   this node's cgroups — otherwise it is nothing of ours, whatever the
   journal says, and is left alone;
3. it still leads its own process group (the agent starts it in a session
   of its own, and stops it by that group);
4. it runs the active release: the record's digest is ``current``, its
   working directory is that release's tree, and its command line has the
   release's service arguments (the program name may differ: a launcher such
   as a pyenv shim execs the real program under its full path);
5. in cgroup mode it is a member of its group: the journaled one, or (a
   record from 0.1.0, which did not journal it) a group of this node named
   after the same release;
6. neither the kill-switch latch nor a deployment whose outcome the node
   has not learned (``awaiting``) forbids it to run: a held node runs no
   service before the control plane's word, adopted or not (the deployment
   may have been abandoned while no agent ran). A deployment is settled as
   soon as it succeeds, so this costs a restart only to an agent restarted
   mid-deployment, which the control plane treats as a lost node anyway.

The tree itself is verified against the manifest by the caller
(:meth:`knightwatch.agent.service.ServiceController.take_over`), which
hashes it. Failing proof 1 or 2 is a :class:`Refusal` that is not ``ours``
(leave the process alone); failing a later one is ``ours`` (stop it, then
start a fresh service through the health checks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from knightwatch.agent.cgroup import CgroupHost, ServiceCgroup
from knightwatch.agent.errors import ServiceError
from knightwatch.agent.journal import AgentState, ServiceRecord, halted_reason
from knightwatch.agent.process import (
    ProcessIdentity,
    command_line,
    identify,
    lies_under,
    process_cwd,
    process_exe,
    read_stat,
)
from knightwatch.agent.runenv import ServiceLaunch

__all__ = ["Adoptable", "Refusal", "examine", "find_group"]


@dataclass(frozen=True)
class Adoptable:
    """Every proof held: the process, its launch and its group (None without cgroups)."""

    identity: ProcessIdentity
    launch: ServiceLaunch
    group: ServiceCgroup | None


@dataclass(frozen=True)
class Refusal:
    """Why the process is not adopted; ``ours``: it is the journaled process (stop it)."""

    reason: str
    ours: bool
    group: ServiceCgroup | None = None


def examine(
    record: ServiceRecord,
    state: AgentState,
    launch: ServiceLaunch | None,
    *,
    root: Path,
    cgroups: CgroupHost | None,
    node: str,
) -> Adoptable | Refusal:
    """Prove (or not) that ``record``'s process is the active release's service; see above."""
    pid = record.pid
    identity = identify(pid)
    if identity is None:
        return Refusal(f"pid {pid} is gone", ours=False)
    if identity.boot_id != record.boot_id:
        return Refusal(f"pid {pid} is from another boot", ours=False)
    if identity.start_ticks != record.start_ticks:
        return Refusal(f"pid {pid}'s start time does not match the journal", ours=False)
    group = find_group(record, cgroups, node)
    cwd = process_cwd(pid)
    resolved = os.path.realpath(root)
    if group is None and not any(lies_under(p, resolved) for p in (cwd, process_exe(pid))):
        return Refusal(f"pid {pid} does not run from {root} (cwd {cwd or '?'})", ours=False)
    problem = _not_the_service(record, state, launch, identity, cwd, group, cgroups)
    if problem is not None:
        return Refusal(problem, ours=True, group=group)
    assert launch is not None
    return Adoptable(identity, launch, group)


def _not_the_service(
    record: ServiceRecord,
    state: AgentState,
    launch: ServiceLaunch | None,
    identity: ProcessIdentity,
    cwd: str,
    group: ServiceCgroup | None,
    cgroups: CgroupHost | None,
) -> str | None:
    """Why the (journaled) process is not the active release's service to keep; None if it is.

    A process of another release, or with no service to be, is refused for that
    alone; otherwise every reason found is listed.
    """
    pid = identity.pid
    if record.digest != state.current:
        active = state.current[:12] + "…" if state.current else "none"
        return f"pid {pid} runs release {record.digest[:12]}…, the active release is {active}"
    if launch is None:
        return "the active release has no service (or its manifest cannot be read)"
    problems: list[str] = []
    if (process := _not_its_process(launch, pid, cwd)) is not None:
        problems.append(process)
    if cgroups is not None and group is None:
        problems.append(f"pid {pid} is not in its cgroup ({record.cgroup or 'none journaled'})")
    if (halted := halted_reason(state)) is not None:
        problems.append(halted)
    if state.awaiting is not None:
        problems.append(
            f"held: the outcome of deployment {state.awaiting}, which switched to this release, "
            "is not known yet"
        )
    return "; ".join(problems) or None  # every reason, not the first one found


def _not_its_process(launch: ServiceLaunch, pid: int, cwd: str) -> str | None:
    """Why ``pid`` is not ``launch``'s service process as the agent starts it (None: it is)."""
    stat = read_stat(pid)
    if stat is None or stat.pgid != pid:
        return f"pid {pid} no longer leads its process group"
    if cwd != os.fspath(launch.release_dir):
        return f"pid {pid}'s working directory {cwd or '?'} is not the active release tree"
    try:
        expected = launch.argv(launch.spec.command)
    except ServiceError as exc:
        return exc.message
    if not _same_command(command_line(pid), expected):
        return f"pid {pid}'s command line is not the release's service command"
    return None


def _same_command(running: list[str], expected: list[str]) -> bool:
    """Whether ``running`` is ``expected``, its program name aside.

    A launcher on PATH may exec the real program under its full path (a
    pyenv shim, a wrapper script), so only the arguments must be the same.
    """
    return len(running) == len(expected) and running[1:] == expected[1:]


def find_group(
    record: ServiceRecord, cgroups: CgroupHost | None, node: str
) -> ServiceCgroup | None:
    """The cgroup of this node that ``record``'s process is a member of (None: none).

    The journaled group when there is one; for a record without (0.1.0),
    a group of this node named after the same release.
    """
    if cgroups is None:
        return None
    membership = cgroups.parents["unified" if cgroups.version == "v2" else "freezer"]
    if record.cgroup is not None:
        names = [Path(record.cgroup).name] if Path(record.cgroup).parent == membership else []
    else:
        prefix = f"{node}.{record.digest[:16]}."
        try:
            names = sorted(p.name for p in membership.iterdir() if p.name.startswith(prefix))
        except OSError:
            names = []
    for name in names:
        group = ServiceCgroup(cgroups.version, {c: p / name for c, p in cgroups.parents.items()})
        if record.pid in group.members():
            return group
    return None
