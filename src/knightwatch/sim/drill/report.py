"""The drill's report: one table row per scenario, a timeline plot and a JSON document.

The table holds only what the simulation decides (orders, shares, positions,
money, simulated times), so one seed always prints the same table. What the
real machine measured — how fast drift was seen, how fast the kill switch
halted every node — is reported beside it, never inside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knightwatch.sim.drill.outcome import ScenarioOutcome
from knightwatch.sim.drill.settings import DrillSettings, clock_time

__all__ = ["COLUMNS", "DrillReport", "dollars", "duration"]

COLUMNS = (
    "scenario",
    "parent orders",
    "child orders",
    "shares traded",
    "peak position",
    "P&L marked",
    "detected after",
    "halted after",
)


def dollars(cents: int) -> str:
    """Cents as a short dollar amount: ``$1.23M``, ``-$45.6K``, ``$12``."""
    sign = "-" if cents < 0 else ""
    value = abs(cents) / 100
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= size:
            return f"{sign}${value / size:.2f}{unit}"
    return f"{sign}${value:.0f}"


def duration(seconds: float | None) -> str:
    """Simulated seconds as ``12m30s`` (``—`` when it never happened)."""
    if seconds is None:
        return "—"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


@dataclass
class DrillReport:
    """A whole drill: its settings, the four scenarios, and where the files went."""

    settings: DrillSettings
    outcomes: list[ScenarioOutcome]
    files: dict[str, str] = field(default_factory=dict)

    def outcome(self, key: str) -> ScenarioOutcome:
        """The scenario with ``key`` (A, B, C or D)."""
        return next(o for o in self.outcomes if o.key == key)

    def rows(self) -> list[list[str]]:
        """The table: one row of text per scenario, every cell computed by the run."""
        return [_row(o) for o in self.outcomes]

    def measured(self) -> dict[str, Any]:
        """What the real machine measured (not part of the seed-determined table)."""
        c, d = self.outcome("C").facts, self.outcome("D").facts
        return {
            "drift_detected_real_s": c.get("drift_detected_real_s"),
            "kill_max_time_to_halt_ms": (d.get("kill") or {}).get("max_time_to_halt_ms"),
        }

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON document."""
        return {
            "drill": "knightmare",
            "settings": {
                "seed": self.settings.seed,
                "speed": self.settings.speed,
                "fast": self.settings.fast,
                "nodes": self.settings.nodes,
                "tick_s": self.settings.tick_s,
            },
            "columns": list(COLUMNS),
            "table": self.rows(),
            "measured": self.measured(),
            "scenarios": {o.key: o.to_json() for o in self.outcomes},
            "files": self.files,
        }

    def write(self, directory: Path) -> None:
        """Write report.json and timeline.png into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        plot = directory / "timeline.png"
        if write_plot(self, plot):
            self.files["plot"] = str(plot)
        path = directory / "report.json"
        self.files["report"] = str(path)
        path.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")


def _row(o: ScenarioOutcome) -> list[str]:
    detected = duration(o.detected_after_s)
    if o.key == "C":
        detected = "pre-open" if o.detected_after_s is not None else "—"
    return [
        f"{o.key}. {o.short or o.title}",
        f"{o.parent_orders:,}",
        f"{o.child_orders:,}",
        f"{o.shares_traded:,}",
        dollars(o.peak_exposure_cents),
        dollars(o.pnl_cents),
        detected,
        duration(o.halted_after_s),
    ]


_MARK_STYLE = {"runaway": "orange", "alert": "red", "halt": "black", "rollback": "purple"}


def write_plot(report: DrillReport, path: Path) -> bool:
    """The timeline: position and child orders over the day, with deploys, alerts, halts."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (exposure, orders) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    open_s = report.settings.open_s
    for outcome in report.outcomes:
        samples = [s for s in outcome.samples if s.t >= open_s]
        minutes = [(s.t - open_s) / 60 for s in samples]
        label = f"{outcome.key}. {outcome.title}"
        style = "--" if outcome.key == "C" else "-"  # C trades as B does: keep B visible
        exposure.plot(
            minutes, [s.gross_exposure_cents / 100e6 for s in samples], style, label=label
        )
        orders.plot(minutes, [s.child_orders for s in samples], style, label=label)
        for mark in outcome.marks:
            if mark.kind in _MARK_STYLE and mark.t >= open_s:
                x = (mark.t - open_s) / 60
                for axes in (exposure, orders):
                    axes.axvline(x, color=_MARK_STYLE[mark.kind], linestyle=":", linewidth=1)
                exposure.annotate(
                    f"{outcome.key}: {mark.kind}", (x, 0), rotation=90, fontsize=7, va="bottom"
                )
    exposure.set_ylabel("gross position ($M)")
    orders.set_ylabel("child orders sent")
    orders.set_yscale("symlog")
    orders.set_ylim(bottom=0)
    orders.set_xlabel(f"minutes after the open ({clock_time(open_s)} New York)")
    exposure.set_title(f"Knightmare drill, seed {report.settings.seed}")
    exposure.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
