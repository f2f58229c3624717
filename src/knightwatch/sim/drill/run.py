"""The whole drill: build the releases, start the market, run A on hosts, B to D on a fleet."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from knightwatch.localfleet import LocalFleet
from knightwatch.sim.drill.links import ExchangeProcess
from knightwatch.sim.drill.manual import run_manual_day
from knightwatch.sim.drill.protected import drill_fleet, scenario_b, scenario_c, scenario_d
from knightwatch.sim.drill.releases import build_drill_releases
from knightwatch.sim.drill.report import DrillReport
from knightwatch.sim.drill.settings import DrillSettings
from knightwatch.sim.flow import order_flow
from knightwatch.sim.market import symbols

__all__ = ["STEPS", "Hold", "run_drill"]

Hold = Callable[[DrillReport, LocalFleet], None]
"""Called with the finished report while the fleet still runs (``knightwatch demo`` waits)."""
STEPS = 16
"""How many progress lines a drill says (for a progress bar)."""


def run_drill(
    settings: DrillSettings,
    report_dir: Path,
    say: Callable[[str], None] = lambda _text: None,
    hold: Hold | None = None,
) -> DrillReport:
    """Run scenarios A to D with ``settings``; write the report into ``report_dir``."""
    work = report_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    say("building 2012.07, 2012.08 and 2012.08-reuse from the simulator's sources")
    releases = build_drill_releases(work)
    flow = order_flow(settings.seed, symbols(settings.seed))
    exchange = ExchangeProcess(settings.seed, work / "exchange.log")
    try:
        say("A: 1 August 2012 by hand — 7 of 8 hosts copied, the reused flag on, no kill switch")
        manual = run_manual_day(settings, work, exchange, flow, releases)
        with drill_fleet(settings, work, exchange, releases, flow, say) as drill:
            outcomes = [manual, scenario_b(drill), scenario_c(drill), scenario_d(drill)]
            report = DrillReport(settings, outcomes)
            report.write(report_dir)
            say("done")
            if hold is not None:
                hold(report, drill.fleet)
    finally:
        exchange.stop()
    return report
