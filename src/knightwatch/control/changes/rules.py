"""The configured rules of change control: approvals per risk, checklists, freeze windows.

Both come from the server's settings (``[approvals]`` and ``[[freeze]]`` in
server.toml, or KNIGHTWATCH_APPROVALS / KNIGHTWATCH_FREEZE as JSON).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from knightwatch.control.changes.model import Risk

__all__ = ["SOLO", "STANDARD", "ApprovalPolicy", "FreezeWindow", "active_freeze", "parse_freezes"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class ApprovalPolicy:
    """How many people other than the author must approve a change of each risk."""

    low: int = 1
    medium: int = 1
    high: int = 2
    checklists: bool = True
    """Whether each kind's checklist must be ticked before execution."""

    @property
    def solo(self) -> bool:
        """Nobody else need approve and nothing need be ticked: for a local fleet only."""
        return (self.low, self.medium, self.high) == (0, 0, 0) and not self.checklists

    def needed(self, risk: Risk) -> int:
        """Approvals a change of ``risk`` needs."""
        return {Risk.LOW: self.low, Risk.MEDIUM: self.medium, Risk.HIGH: self.high}[risk]

    def to_json(self) -> dict[str, Any]:
        """The JSON form (the server reports it, `fleet up` says when it is solo)."""
        return {
            "low": self.low,
            "medium": self.medium,
            "high": self.high,
            "checklists": self.checklists,
            "solo": self.solo,
        }

    @classmethod
    def parse(cls, value: object) -> ApprovalPolicy:
        """``"solo"``, ``"standard"``, a table or its JSON: ``{low, medium, high, checklists}``."""
        if isinstance(value, ApprovalPolicy):
            return value
        if isinstance(value, str):
            if value.strip() in ("solo", "standard"):
                return SOLO if value.strip() == "solo" else STANDARD
            value = json.loads(value)
        if not isinstance(value, Mapping):
            raise TypeError('expected "solo", "standard" or a table of low, medium, high')
        unknown = set(value) - {"low", "medium", "high", "checklists"}
        if unknown:
            raise ValueError(
                f"unknown keys {sorted(unknown)}; expected low, medium, high, checklists"
            )
        counts = {k: value.get(k, getattr(STANDARD, k)) for k in ("low", "medium", "high")}
        for key, count in counts.items():
            if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 5:
                raise ValueError(f"{key} must be a number of approvals from 0 to 5")
        checklists = value.get("checklists", True)
        if not isinstance(checklists, bool):
            raise ValueError("checklists must be true or false")
        return cls(counts["low"], counts["medium"], counts["high"], checklists)


STANDARD = ApprovalPolicy()
SOLO = ApprovalPolicy(0, 0, 0, checklists=False)


@dataclass(frozen=True)
class FreezeWindow:
    """A recurring time when no change but an emergency may run (e.g. market hours)."""

    name: str
    days: frozenset[int]
    """Weekdays, Monday = 0, in the window's time zone."""
    start: time
    end: time
    zone: str

    def covers(self, moment: datetime) -> bool:
        """Tell whether ``moment`` falls inside the window (in its own time zone)."""
        local = moment.astimezone(ZoneInfo(self.zone))
        now = local.time().replace(tzinfo=None)
        if self.start <= self.end:
            return local.weekday() in self.days and self.start <= now < self.end
        # overnight: from start on a listed day until end on the next morning
        yesterday = (local.weekday() - 1) % 7
        return (local.weekday() in self.days and now >= self.start) or (
            yesterday in self.days and now < self.end
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form, as configured."""
        return {
            "name": self.name,
            "days": [_DAYS[d] for d in sorted(self.days)],
            "start": self.start.strftime("%H:%M"),
            "end": self.end.strftime("%H:%M"),
            "tz": self.zone,
        }


def parse_freezes(value: object) -> tuple[FreezeWindow, ...]:
    """``[[freeze]]`` tables (or their JSON list): name, days, start, end, tz."""
    if isinstance(value, tuple) and all(isinstance(v, FreezeWindow) for v in value):
        return value
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise TypeError("expected a list of freeze windows ([[freeze]] tables)")
    return tuple(_window(item, index) for index, item in enumerate(value))


def active_freeze(windows: Sequence[FreezeWindow], moment: datetime) -> FreezeWindow | None:
    """The first window covering ``moment``, if any."""
    return next((w for w in windows if w.covers(moment)), None)


def _window(item: object, index: int) -> FreezeWindow:
    where = f"freeze #{index + 1}"
    if not isinstance(item, Mapping):
        raise TypeError(f"{where}: expected a table with name, days, start, end, tz")
    unknown = set(item) - {"name", "days", "start", "end", "tz"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    name = str(item.get("name") or "").strip()
    if not name or len(name) > 80:
        raise ValueError(f"{where}: name must be 1-80 characters")
    days = item.get("days", list(_DAYS[:5]))
    if not isinstance(days, list) or not days or any(str(d).lower() not in _DAYS for d in days):
        raise ValueError(f"{where} ({name}): days must be a list of mon … sun")
    zone = str(item.get("tz") or "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{where} ({name}): unknown time zone {zone!r}") from None
    return FreezeWindow(
        name=name,
        days=frozenset(_DAYS.index(str(d).lower()) for d in days),
        start=_clock(item.get("start"), f"{where} ({name}) start"),
        end=_clock(item.get("end"), f"{where} ({name}) end"),
        zone=zone,
    )


def _clock(value: object, where: str) -> time:
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a time of day (HH:MM)") from None
