"""Processes as Linux sees them, read from /proc (no psutil).

A pid alone does not name a process: pids are reused. A process is named by
(pid, start time in clock ticks since boot, boot id), which is what the
agent records in its journal to find its service again after a restart.

The readers below (:func:`list_processes`, :func:`process_cwd`,
:func:`open_files`, :func:`mapped_files`, :func:`command_line`) never raise for
a process that vanishes, turns zombie or is not ours to read: they answer
None, "" or [] instead, because a scan of /proc always races with the
processes it reads.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProcessIdentity",
    "ProcessStat",
    "boot_epoch",
    "boot_id",
    "boot_time",
    "command_line",
    "descendants",
    "escaped_groups",
    "group_alive",
    "groups_running_under",
    "identify",
    "lies_under",
    "list_processes",
    "mapped_files",
    "open_files",
    "process_cwd",
    "process_exe",
    "read_stat",
    "signal_group",
    "signal_number",
]

_PROC = Path("/proc")
_PF_KTHREAD = 0x00200000  # include/linux/sched.h: the task is a kernel thread


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


def boot_epoch() -> float:
    """Return the boot time, seconds since the epoch, to the microsecond.

    ``btime`` (:func:`boot_time`) is truncated to whole seconds, so a start
    time built on it can be up to a second early; this one is read from the
    wall clock minus ``CLOCK_BOOTTIME``, the clock the kernel stamps process
    start times with.
    """
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class ProcessStat:
    """The fields of ``/proc/<pid>/stat`` the agent uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgid: int
    flags: int
    start_ticks: int

    @property
    def dead(self) -> bool:
        """True for a zombie or a dying process (state Z or X): nothing left to inspect."""
        return self.state in ("Z", "X")

    @property
    def kernel_thread(self) -> bool:
        """True for a kernel thread (no executable, no files of its own)."""
        return bool(self.flags & _PF_KTHREAD)

    def started_at(self, boot: float) -> float:
        """Return the start time, seconds since the epoch, given :func:`boot_epoch`."""
        return boot + self.start_ticks / os.sysconf("SC_CLK_TCK")


def read_stat(pid: int) -> ProcessStat | None:
    """Return the stat fields of ``pid``, or None if it is gone or unreadable."""
    data = _read_proc(pid, "stat")
    if data is None:
        return None
    text = data.decode("utf-8", "replace")
    head, sep, tail = text.rpartition(")")
    fields = tail.split()
    if not sep or len(fields) < 20:
        return None
    comm = head.partition("(")[2]
    return ProcessStat(
        pid, comm, fields[0], int(fields[1]), int(fields[2]), int(fields[6]), int(fields[19])
    )


def list_processes() -> list[ProcessStat]:
    """Return the stat fields of every process (not thread) in /proc, zombies included."""
    try:
        names = os.listdir(_PROC)
    except OSError:
        return []
    found = (read_stat(int(name)) for name in names if name.isdigit())
    return [stat for stat in found if stat is not None]


def process_cwd(pid: int) -> str:
    """Return the working directory of ``pid`` as the kernel names it ("" if unreadable).

    The name is resolved (no symlinks) and ends in `` (deleted)`` once the
    directory has been removed.
    """
    return _readlink(f"{_PROC}/{pid}/cwd")


def process_exe(pid: int) -> str:
    """Return the executable of ``pid`` as the kernel names it ("" if unreadable)."""
    return _readlink(f"{_PROC}/{pid}/exe")


def open_files(pid: int, under: str = "/") -> list[str]:
    """Return the paths ``pid`` has open (its fd links) that lie under ``under``.

    Pipes, sockets and anonymous inodes are left out; a removed file keeps
    its kernel suffix `` (deleted)``. ``under`` must be a resolved path.
    """
    directory = f"{_PROC}/{pid}/fd"
    try:
        names = os.listdir(directory)
    except (OSError, ValueError):
        return []
    found: list[str] = []
    for name in names:
        target = _readlink(f"{directory}/{name}")
        if target.startswith("/") and _under(_live_name(target), under):
            found.append(target)
    return found


def mapped_files(pid: int, under: str = "/") -> list[str]:
    """Return the distinct files mapped into ``pid`` (``/proc/<pid>/maps``) under ``under``.

    Shared libraries stay mapped after their fd is closed, so this sees code
    that :func:`open_files` does not. ``under`` must be a resolved path.
    """
    data = _read_proc(pid, "maps")
    if data is None or under.encode() not in data:  # the common case, decided in C
        return []
    found: dict[str, None] = {}
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/") and _under(_live_name(parts[5]), under):
            found[parts[5]] = None
    return list(found)


def command_line(pid: int) -> list[str]:
    """Return the argv of ``pid`` ([] for a kernel thread, a zombie or a vanished process)."""
    data = _read_proc(pid, "cmdline")
    if not data:
        return []
    return [arg.decode("utf-8", "surrogateescape") for arg in data.rstrip(b"\0").split(b"\0")]


def lies_under(path: str, directory: str) -> bool:
    """Tell whether a kernel-given ``path`` is ``directory`` or lies beneath it.

    Both must be resolved paths; a `` (deleted)`` suffix on ``path`` is ignored,
    so a removed file still counts where it was.
    """
    return _under(_live_name(path), directory)


def _read_proc(pid: int, name: str) -> bytes | None:
    """Read ``/proc/<pid>/<name>`` whole in as few calls as the kernel allows; None if gone.

    Plain reads with a large buffer: /proc files claim size 0, and the buffered
    reader's small first reads cost a quarter more on ``maps``.
    """
    try:
        fd = os.open(f"{_PROC}/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    chunks: list[bytes] = []
    try:
        while chunk := os.read(fd, 1 << 17):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


def identify(pid: int) -> ProcessIdentity | None:
    """Return the identity of a live process, or None if it is gone or a zombie."""
    stat = read_stat(pid)
    if stat is None or stat.dead:
        return None
    ticks = stat.start_ticks
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
    Signal 0 answers first, in one system call, when not even a zombie is left.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process is in the group: look closer
    try:
        pids = [int(name) for name in os.listdir(_PROC) if name.isdigit()]
    except OSError:
        return False
    for pid in pids:
        stat = read_stat(pid)
        if stat is not None and not stat.dead and stat.pgid == pgid:
            return True
    return False


def descendants(pid: int, *, limit: int = 1024) -> dict[int, int]:
    """``pid`` and its live descendants, each with its start time in clock ticks.

    Read from /proc/<pid>/task/<tid>/children (no /proc scan). A worker that
    left the group with ``setsid`` is still a child of the process that
    forked it, so this finds what a signal to the group misses.
    """
    found: dict[int, int] = {}
    todo = [pid]
    while todo and len(found) < limit:
        current = todo.pop()
        stat = read_stat(current)
        if current in found or stat is None or stat.dead:
            continue
        found[current] = stat.start_ticks
        try:
            threads = os.listdir(f"{_PROC}/{current}/task")
        except OSError:
            continue
        for tid in threads:
            children = _read_proc(current, f"task/{tid}/children") or b""
            todo.extend(int(child) for child in children.split())
    return dict(sorted(found.items()))


def escaped_groups(family: dict[int, int], pgid: int) -> list[int]:
    """Process groups, other than ``pgid``, of the processes of ``family`` still alive.

    ``family`` maps pids to start times (:func:`descendants`); a pid reused
    since is left alone.
    """
    groups: set[int] = set()
    for pid, start_ticks in family.items():
        stat = read_stat(pid)
        if stat is None or stat.dead or stat.start_ticks != start_ticks:
            continue
        if stat.pgid != pgid:
            groups.add(stat.pgid)
    return sorted(groups)


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
        # The links first: they rule out almost every process in one call each,
        # so a host with many processes costs a third of reading every stat.
        if not any(_under(_readlink(f"{_PROC}/{pid}/{link}"), root) for link in ("cwd", "exe")):
            continue
        stat = read_stat(pid)
        if stat is None or stat.dead or stat.pgid == mine:
            continue
        groups.add(stat.pgid)
    return sorted(groups)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _live_name(path: str) -> str:
    """``path`` without the `` (deleted)`` the kernel appends to a removed file's name."""
    return path.removesuffix(" (deleted)")
