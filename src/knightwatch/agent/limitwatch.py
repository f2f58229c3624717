"""Alerts when the service hits its declared limits, read from its cgroup's own counters.

A memory breach shows as the group's OOM-kill counter rising (the kernel
killed a member to keep the group under ``memory``); a fork bomb shows as
the pids controller's ``max`` counter rising (forks refused at ``pids``).
Each rise is one alert carrying the kernel's counters, so an operator can
compare with ``memory.events`` / ``memory.oom_control`` and ``pids.events``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from knightwatch.clock import Clock
from knightwatch.protocol.messages import CgroupStatus
from knightwatch.protocol.safety import AlertEvent

__all__ = ["OOM_RULE", "PIDS_RULE", "LimitWatch", "Usage"]

OOM_RULE = "cgroup:oom"
PIDS_RULE = "cgroup:pids-limit"


@dataclass(frozen=True)
class Usage:
    """The running release and its cgroup's counters (what :class:`LimitWatch` samples)."""

    release_id: str
    cgroup: CgroupStatus


class LimitWatch:
    """Samples the service's cgroup and turns a rise of its limit counters into alerts."""

    def __init__(
        self,
        usage: Callable[[], Usage | None],
        send: Callable[[list[AlertEvent]], None],
        *,
        clock: Clock,
        interval_s: float = 1.0,
    ) -> None:
        self._usage = usage
        self._send = send
        self._clock = clock
        self._interval_s = interval_s
        self._seen: tuple[str, int, int] | None = None

    def check(self) -> list[AlertEvent]:
        """Alerts for the counters that rose since the last check of the same group."""
        usage = self._usage()
        if usage is None:
            return []
        group = usage.cgroup
        before = self._seen
        self._seen = (group.path, group.oom_kills, group.pids_limit_hits)
        old_oom, old_pids = (before[1], before[2]) if before and before[0] == group.path else (0, 0)
        alerts: list[AlertEvent] = []
        if group.oom_kills > old_oom:
            alerts.append(self._oom(usage, group.oom_kills - old_oom))
        if group.pids_limit_hits > old_pids:
            alerts.append(self._pids(usage, group.pids_limit_hits - old_pids))
        return alerts

    async def run(self) -> None:
        """Check every ``interval_s`` and send what rose, until cancelled."""
        while True:
            alerts = self.check()
            if alerts:
                self._send(alerts)
            await asyncio.sleep(self._interval_s)

    def _oom(self, usage: Usage, new: int) -> AlertEvent:
        group = usage.cgroup
        return self._alert(
            OOM_RULE,
            "critical",
            f"{usage.release_id} went over its memory limit: the kernel killed {new} "
            "of its processes",
            f"cgroup {group.path}: oom_kill {group.oom_kills}, memory now "
            f"{group.memory_bytes} bytes, {group.members} members",
        )

    def _pids(self, usage: Usage, new: int) -> AlertEvent:
        group = usage.cgroup
        return self._alert(
            PIDS_RULE,
            "warning",
            f"{usage.release_id} is at its pids limit: {new} forks refused",
            f"cgroup {group.path}: pids max hits {group.pids_limit_hits}, {group.members} members",
        )

    def _alert(self, rule: str, severity: str, summary: str, detail: str) -> AlertEvent:
        now = self._clock.now()
        return AlertEvent.model_validate(
            {
                "rule": rule,
                "severity": severity,
                "summary": summary[:4096],
                "detail": detail[:4096],
                "first_at": now,
                "last_at": now,
            }
        )
