"""What a scenario measured: its samples over time, its marked events, its figures."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Mark", "Sample", "ScenarioOutcome"]


@dataclass(frozen=True)
class Sample:
    """The firm's book at one simulated instant (read from the exchange)."""

    t: float
    child_orders: int
    """Child orders the routers had sent so far in this scenario."""
    gross_exposure_cents: int
    pnl_cents: int


@dataclass(frozen=True)
class Mark:
    """Something that happened at a simulated instant: a deploy, an alert, a halt …"""

    t: float
    kind: str
    text: str


@dataclass
class ScenarioOutcome:
    """Everything one scenario measured; the report's row, plot and JSON come from it."""

    key: str
    title: str
    short: str = ""
    """The title in a few words, for the table."""
    parent_orders: int = 0
    child_orders: int = 0
    child_shares: int = 0
    executions: int = 0
    shares_traded: int = 0
    symbols_traded: int = 0
    peak_exposure_cents: int = 0
    pnl_cents: int = 0
    detected_after_s: float | None = None
    """Simulated seconds from the first runaway child order to the first alarm anyone saw."""
    halted_after_s: float | None = None
    """Simulated seconds from the first runaway child order until nothing traded."""
    warnings: int = 0
    """Warning lines the routers wrote (scenario A: into a file nobody reads)."""
    samples: list[Sample] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    """Scenario-specific findings (refusal reasons, node counts, halt times …), for JSON."""

    @property
    def loss_cents(self) -> int:
        """The loss marked to market (0 when the day made money)."""
        return max(0, -self.pnl_cents)

    def mark(self, t: float, kind: str, text: str) -> None:
        """Record that ``text`` happened at simulated time ``t``."""
        self.marks.append(Mark(t, kind, text))

    def sample(self, sample: Sample) -> None:
        """Record the book at one instant; keep the peak exposure."""
        self.samples.append(sample)
        self.peak_exposure_cents = max(self.peak_exposure_cents, sample.gross_exposure_cents)

    def first_mark(self, kind: str) -> Mark | None:
        """The earliest mark of ``kind``, if any."""
        return min((m for m in self.marks if m.kind == kind), key=lambda m: m.t, default=None)

    def to_json(self) -> dict[str, Any]:
        """Everything, as plain JSON data."""
        data = asdict(self)
        data["loss_cents"] = self.loss_cents
        return data
