"""A service's own control group: exact membership, a freeze nothing escapes, its limits.

The agent creates one group per service start under a ``knightwatch``
parent group. Linux puts every child of a member in the group too,
whatever it does (fork, ``setsid``, double fork), so the members *are*
the service's processes; no reading of /proc is needed to find them.

Two layouts are used, found by :func:`probe_cgroups`:

- **v2** (the unified hierarchy, at the mount point or at ``unified/``)
  when it offers the ``memory`` and ``pids`` controllers: one directory,
  ``cgroup.freeze`` to freeze and ``cgroup.kill`` (or SIGKILL to each
  frozen member) to kill.
- **v1** otherwise: one group of the same name in each of the ``freezer``,
  ``pids``, ``memory`` (and ``cpu`` when mounted) hierarchies; the freezer
  group's ``cgroup.procs`` is the membership.

A process joins before it runs any of the release's code: the spawn writes
``0`` (the writer itself) to every group's ``cgroup.procs`` between fork
and exec (:meth:`ServiceCgroup.join`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from knightwatch.agent.errors import CgroupUnavailableError
from knightwatch.bundle.spec import LimitsSpec

__all__ = [
    "CgroupHost",
    "CgroupUsage",
    "ServiceCgroup",
    "create_group",
    "probe_cgroups",
    "remove_empty_groups",
]

MOUNT = Path("/sys/fs/cgroup")
PARENT = "knightwatch"
_V1_NEEDED = ("freezer", "pids", "memory")
_V1_OPTIONAL = ("cpu",)
_CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupHost:
    """Where this agent creates service groups: the layout and each parent group."""

    version: Literal["v1", "v2"]
    parents: dict[str, Path]
    """v2: ``{"unified": parent}``; v1: controller name to its parent group."""

    @property
    def accounting(self) -> str:
        """How the node's process accounting is described in ``status``."""
        return f"exact (cgroup {self.version})"


@dataclass(frozen=True)
class CgroupUsage:
    """A group's counters as the kernel reports them."""

    members: int
    memory_bytes: int | None
    oom_kills: int
    pids_limit_hits: int


@dataclass(frozen=True)
class ServiceCgroup:
    """One service start's group (a directory per hierarchy used)."""

    version: Literal["v1", "v2"]
    dirs: dict[str, Path]

    @property
    def path(self) -> Path:
        """The group whose ``cgroup.procs`` lists the members (check it with ``cat``)."""
        return self.dirs["unified" if self.version == "v2" else "freezer"]

    def join(self) -> Callable[[], None]:
        """A ``preexec_fn`` that moves the new process into every group before exec.

        Only system calls on names computed here: safe between fork and exec.
        """
        files = [os.fspath(d / "cgroup.procs") for d in self.dirs.values()]

        def enter() -> None:
            for name in files:
                fd = os.open(name, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)

        return enter

    def members(self) -> list[int]:
        """The pids in the group now (zombies not yet reaped included); [] once removed."""
        text = _read(self.path / "cgroup.procs")
        return sorted(int(pid) for pid in (text or "").split())

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every member."""
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def freeze(self, frozen: bool = True) -> None:
        """Freeze (or thaw) every member: a frozen process cannot fork, exit or escape."""
        if self.version == "v2":
            _write(self.path / "cgroup.freeze", "1" if frozen else "0")
        else:
            _write(self.path / "freezer.state", "FROZEN" if frozen else "THAWED")

    def kill(self) -> None:
        """SIGKILL every member, frozen first so that none forks in between, then thaw."""
        if self.version == "v2" and (self.path / "cgroup.kill").exists():
            _write(self.path / "cgroup.kill", "1")
            return
        self.freeze()
        try:
            self.signal(signal.SIGKILL)
        finally:
            self.freeze(False)

    def usage(self) -> CgroupUsage:
        """Member count, current memory and the OOM-kill and pids-limit counters."""
        if self.version == "v2":
            memory = _int(_read(self.path / "memory.current"))
            oom = _keyed(self.path / "memory.events", "oom_kill")
            pids = _keyed(self.path / "pids.events", "max")
        else:
            memory = _int(_read(self.dirs["memory"] / "memory.usage_in_bytes"))
            oom = _keyed(self.dirs["memory"] / "memory.oom_control", "oom_kill")
            pids = _keyed(self.dirs["pids"] / "pids.events", "max")
        return CgroupUsage(len(self.members()), memory, oom, pids)

    def remove(self) -> bool:
        """Remove the (empty) groups; False if one is still busy."""
        removed = True
        for directory in self.dirs.values():
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                removed = False
        return removed


def probe_cgroups(mount: Path = MOUNT, parent: str = PARENT) -> CgroupHost:
    """Find where service groups can be created and create the parent group(s).

    Raise :class:`CgroupUnavailableError` saying why when neither layout
    works (nothing mounted, no permission): the agent then accounts for
    processes by reading /proc, best effort.
    """
    reasons: list[str] = []
    for root in (mount, mount / "unified"):
        if (root / "cgroup.controllers").exists():
            try:
                return _probe_v2(root, parent)
            except OSError as exc:
                reasons.append(f"v2 at {root}: {exc.strerror or exc}")
            except CgroupUnavailableError as exc:
                reasons.append(exc.message)
    try:
        return _probe_v1(mount, parent)
    except OSError as exc:
        reasons.append(f"v1 under {mount}: {exc.strerror or exc} ({exc.filename})")
    except CgroupUnavailableError as exc:
        reasons.append(exc.message)
    raise CgroupUnavailableError("no cgroup can be created here: " + "; ".join(reasons))


def create_group(host: CgroupHost, name: str, limits: LimitsSpec | None) -> ServiceCgroup:
    """Create the group ``name`` in every hierarchy of ``host`` and apply ``limits``.

    Raise OSError if a directory or a limit cannot be written (the groups
    made so far are removed again).
    """
    group = ServiceCgroup(host.version, {c: p / name for c, p in host.parents.items()})
    try:
        for directory in group.dirs.values():
            directory.mkdir(exist_ok=True)
        if limits is not None:
            _apply_limits(group, limits)
    except OSError:
        group.remove()
        raise
    return group


def remove_empty_groups(host: CgroupHost, prefix: str) -> list[str]:
    """Remove the empty groups whose name starts with ``prefix`` (left by an earlier agent run).

    A group with members is left alone, and so is one made in the last
    ``YOUNG_GROUP_S`` seconds: between its creation and its first member's
    exec it is empty, and removing it then makes that start fail (the process
    cannot join). Return the names removed.
    """
    membership = "unified" if host.version == "v2" else "freezer"
    removed: list[str] = []
    try:
        names = sorted(p.name for p in host.parents[membership].iterdir() if p.is_dir())
    except OSError:
        return []
    for name in names:
        if not name.startswith(prefix) or _young(host.parents[membership] / name):
            continue
        group = ServiceCgroup(host.version, {c: p / name for c, p in host.parents.items()})
        if not group.members() and group.remove():
            removed.append(name)
    return removed


YOUNG_GROUP_S = 60.0
"""A group this young may be about to get its first member: it is never removed as stale."""


def _young(path: Path) -> bool:
    # The kernel's own creation time of the directory, on its wall clock (not the agent's).
    try:
        return time.time() - path.stat().st_mtime < YOUNG_GROUP_S
    except OSError:
        return False


def _probe_v2(root: Path, parent: str) -> CgroupHost:
    offered = set((_read(root / "cgroup.controllers") or "").split())
    missing = {"memory", "pids"} - offered
    if missing:
        raise CgroupUnavailableError(
            f"v2 at {root} lacks the {', '.join(sorted(missing))} controller(s) "
            "(bound to v1 hierarchies)"
        )
    wanted = " ".join(f"+{c}" for c in ("cpu", "memory", "pids") if c in offered)
    _write(root / "cgroup.subtree_control", wanted)
    group = root / parent
    group.mkdir(exist_ok=True)
    _write(group / "cgroup.subtree_control", wanted)
    return CgroupHost("v2", {"unified": group})


def _probe_v1(mount: Path, parent: str) -> CgroupHost:
    missing = [c for c in _V1_NEEDED if not (mount / c / "cgroup.procs").exists()]
    if missing:
        raise CgroupUnavailableError(f"v1: {', '.join(missing)} not mounted under {mount}")
    parents: dict[str, Path] = {}
    for controller in _V1_NEEDED + _V1_OPTIONAL:
        if (mount / controller / "cgroup.procs").exists():
            parents[controller] = mount / controller / parent
            parents[controller].mkdir(exist_ok=True)
    return CgroupHost("v1", parents)


def _apply_limits(group: ServiceCgroup, limits: LimitsSpec) -> None:
    v2 = group.version == "v2"
    dirs = group.dirs
    if limits.memory is not None:
        if v2:
            _write(dirs["unified"] / "memory.max", str(limits.memory))
            if (dirs["unified"] / "memory.swap.max").exists():
                _write(dirs["unified"] / "memory.swap.max", "0")
        else:
            _write(dirs["memory"] / "memory.limit_in_bytes", str(limits.memory))
    if limits.pids is not None:
        _write(dirs["unified" if v2 else "pids"] / "pids.max", str(limits.pids))
    cpu = dirs.get("unified" if v2 else "cpu")
    if cpu is None and (limits.cpu is not None or limits.cpu_weight is not None):
        raise OSError(f"no cpu controller for the group {group.path}")
    if cpu is not None and limits.cpu is not None:
        quota = max(1000, round(limits.cpu * _CPU_PERIOD_US))
        if v2:
            _write(cpu / "cpu.max", f"{quota} {_CPU_PERIOD_US}")
        else:
            _write(cpu / "cpu.cfs_period_us", str(_CPU_PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(quota))
    if cpu is not None and limits.cpu_weight is not None:
        if v2:
            _write(cpu / "cpu.weight", str(limits.cpu_weight))
        else:  # v1 shares: weight 100 is the default 1024
            _write(cpu / "cpu.shares", str(max(2, limits.cpu_weight * 1024 // 100)))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None


def _keyed(path: Path, key: str) -> int:
    """The value of ``key`` in a flat-keyed file such as ``memory.events`` (0 if absent)."""
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return _int(value) or 0
    return 0
