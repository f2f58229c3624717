"""The process audit: is what runs the release that ``current`` names? (promise P2)

A release tree can match its manifest byte for byte while the machine runs
something else: a service started before the last switch still executes the
old code it loaded, and a process nobody supervises can run straight out of
an old ``releases/<digest>`` tree. On 1 August 2012 the eighth SMARS server
did exactly that, and nothing looked. The tree check proves the files; this
module proves the processes, from /proc alone, once a second:

* every process of the supervised service — the members of its cgroup
  when it has one, else its process group and anything that group forked —
  must have started after the last switch of ``current``, work inside the
  current release, and hold nothing open or mapped from another release —
  otherwise it is a ``stale-process``;
* every other process — except the agent and what the agent runs — whose
  executable, working directory, open or mapped files or argv reach under
  ROOT is an ``unmanaged-process``, and the finding says which release it
  runs from when that is not the current one.

Start times are compared on :func:`~knightwatch.agent.process.boot_epoch`,
not on ``btime``, which is truncated to whole seconds and would make a
service started right after the switch look older than it. Interpreted code
(Python modules, scripts) is read and closed, so it leaves no mapping behind:
for such services the start time and the working directory are the evidence.

What this audit flags is what the agent's stray sweep stops
(:func:`~knightwatch.agent.termination.stop_strays`, run by a
reconcile, a retirement, a halt and the agent's start): one predicate, so a
reconcile never leaves running what the audit calls drift.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from knightwatch.agent.process import (
    ProcessStat,
    boot_epoch,
    command_line,
    lies_under,
    list_processes,
    mapped_files,
    open_files,
    process_cwd,
    process_exe,
    read_stat,
)

__all__ = ["ProcessFinding", "ServiceIdentity", "audit_processes", "runs_a_release"]

FindingKind = Literal["stale-process", "unmanaged-process"]
Where = Literal["exe", "cwd", "mapped", "open", "argv"]
Role = Literal["agent", "service", "other"]

# A tree under releases/: a digest, or one being staged or deleted (layout.py's names).
_RELEASE_NAME = re.compile(r"(?:\.(?:staging|trash)-)?([0-9a-f]{64})(?:-[0-9a-f]+)?")
_WHERE_RANK: dict[Where, int] = {"exe": 0, "cwd": 1, "mapped": 2, "open": 3, "argv": 4}
_MORE_SHOWN = 2


@dataclass(frozen=True)
class ProcessFinding:
    """One process that breaks P2, with every reason against it in one line."""

    kind: FindingKind
    pid: int
    detail: str
    """One readable line naming the pid, the command name, and why."""
    release: str | None
    """Digest of the release directory the process runs from or has open, if any."""
    start_ticks: int = 0
    """When the process started (clock ticks since boot): with ``pid``, it names the process."""


@dataclass(frozen=True)
class ServiceIdentity:
    """The service process group the agent supervises, and the release it started it from.

    ``members`` is the service's cgroup membership when it has one: then a
    process is the service's exactly when it is a member (a double-forked
    daemon included, a process started by hand from the release tree not),
    and the process group and parent links are not consulted.
    """

    pgid: int
    digest: str
    members: frozenset[int] | None = None


@dataclass(frozen=True)
class _Sighting:
    """One place where a process touches ROOT, classified once."""

    where: Where
    path: str
    release: str | None
    current: bool

    def rank(self) -> tuple[int, int]:
        """Sort key: another release first, then the current one, then the rest of ROOT."""
        kind = 0 if self.release is not None and not self.current else 1 if self.current else 2
        return kind, _WHERE_RANK[self.where]


@dataclass(frozen=True)
class _Scope:
    """What one scan compares against, resolved once."""

    root: str
    spellings: tuple[str, ...]
    releases: str
    current_digest: str | None
    current_dir: str | None

    @classmethod
    def of(cls, root: Path, current_digest: str | None) -> _Scope:
        """Resolve ``root`` and the current release directory."""
        real = os.path.realpath(root)
        releases = os.path.join(real, "releases")
        current = os.path.join(releases, current_digest) if current_digest else None
        spellings = tuple(dict.fromkeys((os.path.abspath(root), real)))
        return cls(real, spellings, releases, current_digest, current)

    def sighting(self, where: Where, path: str) -> _Sighting:
        """Classify a resolved ``path`` found at ``where``."""
        current = self.current_dir is not None and lies_under(path, self.current_dir)
        return _Sighting(where, path, self.release_of(path), current)

    def outside_current(self, cwd: str) -> bool:
        """Whether a (readable) working directory lies outside the live current release."""
        home = self.current_dir
        if not cwd:
            return False
        return home is None or not lies_under(cwd, home) or cwd.endswith(" (deleted)")

    def release_of(self, path: str) -> str | None:
        """The digest of the release tree ``path`` lies in, or None."""
        live = path.removesuffix(" (deleted)")
        if not live.startswith(self.releases + "/"):
            return None
        match = _RELEASE_NAME.fullmatch(live[len(self.releases) + 1 :].partition("/")[0])
        return match.group(1) if match else None

    def in_argv(self, argv: Iterable[str]) -> list[str]:
        """The absolute paths under ROOT that ``argv`` names (also as ``--opt=PATH``)."""
        found: dict[str, None] = {}
        for arg in argv:
            for word in (arg, arg.partition("=")[2]):
                if word.startswith("/") and any(lies_under(word, s) for s in self.spellings):
                    real = os.path.realpath(word)
                    found[real if lies_under(real, self.root) else os.path.normpath(word)] = None
        return list(found)


def audit_processes(
    root: Path,
    current_digest: str | None,
    service: ServiceIdentity | None,
    switched_at: float | None,
    *,
    agent_pid: int | None = None,
    tolerance_s: float = 0.5,
) -> list[ProcessFinding]:
    """Return the processes that break P2 on this node, sorted by (kind, pid).

    ``service`` is the group the agent supervises (None when none runs) and
    ``switched_at`` the epoch time ``current`` last changed (None: unknown,
    no start-time check). A service process started more than ``tolerance_s``
    before the switch is stale. ``agent_pid`` (default: this process) and its
    descendants are never reported, nor are zombies, kernel threads,
    processes that vanish during the scan or that may not be read.
    """
    scope = _Scope.of(root, current_digest)
    table = {stat.pid: stat for stat in list_processes()}
    roles = _Roles(table, os.getpid() if agent_pid is None else agent_pid, service)
    boot = boot_epoch()
    findings: list[ProcessFinding] = []
    for stat in table.values():
        if stat.dead or stat.kernel_thread:
            continue
        role = roles.of(stat.pid)
        if role == "agent":
            continue
        cwd = process_cwd(stat.pid)
        sightings = _sightings(stat.pid, cwd, scope)
        if role == "service" and service is not None:
            found = _stale(stat, cwd, scope, sightings, service, (switched_at, boot, tolerance_s))
        else:
            found = _unmanaged(stat, scope, sightings)
        if found is not None and _same_process(stat):
            findings.append(found)
    return sorted(findings, key=lambda f: (f.kind, f.pid))


def runs_a_release(finding: ProcessFinding) -> bool:
    """Whether a flagged process runs from (or holds) a release tree, not just from ROOT."""
    return finding.release is not None


class _Roles:
    """Who each process belongs to: the agent, the service, or neither (walking ppids)."""

    def __init__(
        self, table: dict[int, ProcessStat], agent_pid: int, service: ServiceIdentity | None
    ) -> None:
        self._table = table
        self._agent = agent_pid
        self._pgid = service.pgid if service is not None else None
        self._members = service.members if service is not None else None
        self._known: dict[int, Role] = {}

    def of(self, pid: int) -> Role:
        """Return "agent", "service" or "other" for ``pid``."""
        if self._members is not None and pid in self._members:
            return "service"  # the kernel's membership: exact, whatever the process did
        chain: list[int] = []
        role: Role = "other"
        while pid in self._table and pid not in chain:
            if pid in self._known:
                role = self._known[pid]
                break
            chain.append(pid)
            stat = self._table[pid]
            if pid == self._agent:
                role = "agent"
                break
            if self._members is None and stat.pgid == self._pgid:
                role = "service"
                break
            pid = stat.ppid
        self._known.update(dict.fromkeys(chain, role))
        return role


def _sightings(pid: int, cwd: str, scope: _Scope) -> list[_Sighting]:
    """Every place where ``pid`` touches ROOT: exe, cwd, open and mapped files, argv."""
    exe = process_exe(pid)
    links: tuple[tuple[Where, str], ...] = (("exe", exe), ("cwd", cwd))
    found = [scope.sighting(w, path) for w, path in links if path and lies_under(path, scope.root)]
    found += [scope.sighting("mapped", p) for p in mapped_files(pid, scope.root) if p != exe]
    found += [scope.sighting("open", p) for p in open_files(pid, scope.root)]
    found += [scope.sighting("argv", p) for p in scope.in_argv(command_line(pid))]
    return sorted(found, key=_Sighting.rank)


def _stale(
    stat: ProcessStat,
    cwd: str,
    scope: _Scope,
    sightings: list[_Sighting],
    service: ServiceIdentity,
    timing: tuple[float | None, float, float],
) -> ProcessFinding | None:
    """A finding for a service process that is not of the current release, else None.

    ``timing`` is (last switch, boot epoch, tolerance), all in seconds.
    """
    switched_at, boot, tolerance_s = timing
    foreign = [s for s in sightings if s.release is not None and not s.current]
    reasons = [_describe(foreign[0]) + _more(foreign[1:])] if foreign else []
    if service.digest != scope.current_digest:
        now = _short(scope.current_digest) if scope.current_digest else "none"
        reasons.append(f"was started from release {_short(service.digest)}, current is {now}")
    started = stat.started_at(boot)
    if switched_at is not None and started < switched_at - tolerance_s:
        reasons.append(f"started {switched_at - started:.1f} s before the last switch")
    if scope.outside_current(cwd) and not any(s.where == "cwd" for s in foreign):
        reasons.append(f"works outside the current release (cwd {cwd})")
    if not reasons:
        return None
    release = foreign[0].release if foreign else scope.release_of(cwd)
    detail = f"pid {stat.pid} ({stat.comm}) " + "; ".join(reasons)
    return ProcessFinding("stale-process", stat.pid, detail, release, stat.start_ticks)


def _unmanaged(
    stat: ProcessStat, scope: _Scope, sightings: list[_Sighting]
) -> ProcessFinding | None:
    """A finding for a process outside the agent's care that runs code from ROOT, else None.

    Running from ROOT (exe or cwd) counts anywhere under it. Otherwise only
    code counts: a release file mapped into memory (native code), or a
    release script an interpreter was started with. A process that merely
    reads release files — a backup, a checksum sweep, ``tail -f`` of the
    service log — is not drift.
    """
    sightings = [s for s in sightings if _runs_code(stat, s)]
    if not sightings:
        return None
    first = sightings[0]
    detail = f"pid {stat.pid} ({stat.comm}) {_describe(first, scope.root)}{_more(sightings[1:])}"
    return ProcessFinding("unmanaged-process", stat.pid, detail, first.release, stat.start_ticks)


_INTERPRETERS = (
    "python", "perl", "ruby", "node", "bash", "sh", "dash", "zsh", "java", "php", "lua",
)  # fmt: skip


def _runs_code(stat: ProcessStat, sighting: _Sighting) -> bool:
    """Whether ``sighting`` shows a process running code from ROOT (not just reading it)."""
    if sighting.where in ("exe", "cwd"):
        return True
    if sighting.release is None:
        return False
    if sighting.where == "mapped":
        return True
    interpreter = stat.comm.rstrip("0123456789.") in _INTERPRETERS  # python3.11, not sha256sum
    return sighting.where == "argv" and interpreter and os.path.isfile(sighting.path)


def _describe(sighting: _Sighting, root: str = "") -> str:
    """One clause: what the process does with which tree, and the path that shows it."""
    verb = {
        "exe": "runs from",
        "cwd": "runs from",
        "mapped": "has a file mapped from",
        "open": "has a file open from",
        "argv": "names on its command line a path in",
    }[sighting.where]
    if sighting.release is None:
        what = root
    elif sighting.current:
        what = f"the current release {_short(sighting.release)} but is not the service"
    else:
        what = f"release {_short(sighting.release)} which is not current"
    return f"{verb} {what} ({sighting.where} {sighting.path})"


def _more(rest: list[_Sighting]) -> str:
    """The other sightings, a few named and the rest counted."""
    if not rest:
        return ""
    named = ", ".join(f"{s.where} {s.path}" for s in rest[:_MORE_SHOWN])
    extra = len(rest) - _MORE_SHOWN
    return f"; also {named}" + (f" and {extra} more" if extra > 0 else "")


def _short(digest: str) -> str:
    """A digest shortened for a human: its first 12 hex digits."""
    return f"{digest[:12]}…"


def _same_process(stat: ProcessStat) -> bool:
    """Whether ``stat.pid`` still names the same live process (pids are reused)."""
    again = read_stat(stat.pid)
    return again is not None and not again.dead and again.start_ticks == stat.start_ticks
