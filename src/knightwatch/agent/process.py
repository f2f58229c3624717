"""Processes as Linux sees them, read from /proc (no psutil).

A pid alone does not name a process: pids are reused. A process is named by
(pid, start time in clock ticks since boot, boot id), which is what the
agent records in its journal to find its service again after a restart.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProcessIdentity",
    "boot_id",
    "boot_time",
    "group_alive",
    "groups_running_under",
    "identify",
    "signal_group",
    "signal_number",
]

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessIdentity:
    """A process named beyond its pid; ``started_at`` is seconds since the epoch."""

    pid: int
    start_ticks: int
    boot_id: str
    started_at: float


def boot_id() -> str:
    """Return this boot's random id (changes at every reboot)."""
    return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()


def boot_time() -> float:
    """Return the boot time, seconds since the epoch (``btime`` of /proc/stat)."""
    for line in (_PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("/proc/stat has no btime line")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 2 (comm) is in parentheses and may hold spaces: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def identify(pid: int) -> ProcessIdentity | None:
    """Return the identity of a live process, or None if it is gone or a zombie."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    ticks = int(fields[19])  # field 22 of the whole line
    started_at = boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    return ProcessIdentity(pid, ticks, boot_id(), started_at)


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to a process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Tell whether any live (non-zombie) process is left in the group ``pgid``.

    Zombies are ignored: once the agent is gone, a dead service may wait
    forever for a PID 1 that does not reap, and it is dead all the same.
    """
    try:
        pids = [int(name) for name in os.listdir(_PROC) if name.isdigit()]
    except OSError:
        return False
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            return True
    return False


def signal_number(name: str) -> int:
    """Return the number of a signal named like ``SIGTERM``."""
    return int(signal.Signals[name])


def groups_running_under(directory: Path) -> list[int]:
    """Process groups of live processes whose cwd or executable lies under ``directory``.

    This agent's own group is never included. Used at start to find a service
    an earlier agent run spawned but could not journal (killed in between).
    """
    root = os.fspath(directory.resolve())
    mine = os.getpgrp()
    groups: set[int] = set()
    try:
        pids = [int(name) for name in os.listdir(_PROC) if name.isdigit()]
    except OSError:
        return []
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X") or int(fields[2]) == mine:
            continue
        if any(_under(_readlink(f"{_PROC}/{pid}/{link}"), root) for link in ("cwd", "exe")):
            groups.add(int(fields[2]))
    return sorted(groups)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")
