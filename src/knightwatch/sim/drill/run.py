"""The whole drill: build the releases, start the market, run A on hosts, B to D on a fleet."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from knightwatch.errors import InvalidInputError
from knightwatch.localfleet import LocalFleet
from knightwatch.sim.drill.links import ExchangeProcess
from knightwatch.sim.drill.manual import run_manual_day
from knightwatch.sim.drill.protected import drill_fleet, scenario_b, scenario_c, scenario_d
from knightwatch.sim.drill.releases import build_drill_releases
from knightwatch.sim.drill.report import DrillReport
from knightwatch.sim.drill.settings import DrillSettings
from knightwatch.sim.flow import order_flow
from knightwatch.sim.market import symbols

__all__ = ["STEPS", "Hold", "fresh_work_directory", "run_drill"]

Hold = Callable[[DrillReport, LocalFleet], None]
"""Called with the finished report while the fleet still runs (``knightwatch demo`` waits)."""
STEPS = 15
"""How many progress lines a drill says (for a progress bar)."""


MARKER = ".knightmare-drill"


def fresh_work_directory(report_dir: Path) -> Path:
    """``report_dir/work``, emptied — only if an earlier drill made it (never a user's files)."""
    if report_dir.exists() and not report_dir.is_dir():
        raise InvalidInputError(
            f"--report {report_dir} is a file, not a directory",
            hint="give a directory (it is created if missing)",
        )
    work = report_dir / "work"
    if work.exists():
        if not (work / MARKER).exists():
            raise InvalidInputError(
                f"{work} exists and is not a drill's work directory; not touching it",
                hint="choose another --report directory",
            )
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("made by knightwatch drill knightmare; removed by the next run\n")
    return work


def run_drill(
    settings: DrillSettings,
    report_dir: Path,
    say: Callable[[str], None] = lambda _text: None,
    hold: Hold | None = None,
) -> DrillReport:
    """Run scenarios A to D with ``settings``; write the report into ``report_dir``."""
    work = fresh_work_directory(report_dir)
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
