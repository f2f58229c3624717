"""What a drill run is: its seed, pace and the shape of the simulated day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from knightwatch.errors import InvalidInputError

__all__ = ["DAY_START", "OPEN_S", "SESSION_S", "DrillSettings", "clock_time"]

DAY_START = datetime(2012, 8, 1, 12, 0, tzinfo=UTC)
"""Simulated time 0: 08:00 in New York on 1 August 2012 (EDT, UTC-4)."""
OPEN_S = 5400.0
"""The open, 09:30, in simulated seconds after 08:00."""
SESSION_S = 2700.0
"""The 45 minutes the drill trades (Knight's took 45 minutes to stop)."""
_NEW_YORK = timedelta(hours=-4)


def clock_time(t: float) -> str:
    """Simulated seconds after 08:00 as the New York wall time, e.g. ``09:31:15``."""
    return (DAY_START + _NEW_YORK + timedelta(seconds=t)).strftime("%H:%M:%S")


@dataclass(frozen=True)
class DrillSettings:
    """One drill run: the same settings (and seed) always give the same tables."""

    seed: int = 20120801
    speed: float = 0.0
    """Simulated seconds per wall-clock second (0: as fast as the fleet answers)."""
    fast: bool = False
    """Coarser ticks (CI): the same day in fewer, larger steps."""
    nodes: int = 8
    rollback_after_s: float = 1200.0
    """Scenario A: how long after the open the operator rolls the seven nodes back."""
    preopen_step_s: float = 60.0
    """Before the open the routers run their checks once a simulated minute."""

    def __post_init__(self) -> None:
        if self.speed < 0 or self.speed != self.speed:
            raise InvalidInputError(
                f"--speed must be 0 (as fast as possible) or more, not {self.speed}",
                hint="e.g. --speed 60: one simulated minute per second",
            )
        if not 0 <= self.seed < 2**63:
            raise InvalidInputError(f"--seed must be from 0 to 2**63-1, not {self.seed}")
        if not 2 <= self.nodes <= 64:
            raise InvalidInputError(f"a drill fleet has 2 to 64 nodes, not {self.nodes}")

    @property
    def tick_s(self) -> float:
        """Simulated seconds per step of the trading session."""
        return 15.0 if self.fast else 5.0

    @property
    def open_s(self) -> float:
        """When the market opens (simulated seconds after 08:00)."""
        return OPEN_S

    @property
    def end_s(self) -> float:
        """When the session the drill trades ends: 45 minutes after the open."""
        return OPEN_S + SESSION_S

    @property
    def node_names(self) -> list[str]:
        """node1 … nodeN: the last one is the node the manual deploy misses."""
        return [f"node{i}" for i in range(1, self.nodes + 1)]
