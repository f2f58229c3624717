"""``knightwatch drill knightmare`` and ``knightwatch demo``: 1 August 2012, replayed."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.box import SIMPLE_HEAD
from rich.table import Table

from knightwatch.cli.options import JsonOpt
from knightwatch.cli.output import err, out, print_json

if TYPE_CHECKING:
    from knightwatch.localfleet import LocalFleet
    from knightwatch.sim.drill import DrillReport, DrillSettings

__all__ = ["app", "demo", "knightmare", "register"]

app = typer.Typer(
    help="Drills: replay an incident on a real local fleet and measure what stops it.",
    no_args_is_help=True,
)
SeedOpt = Annotated[
    int, typer.Option("--seed", help="The simulation's seed: one seed, one table", min=0)
]
SpeedOpt = Annotated[
    float,
    typer.Option(
        "--speed",
        help="Simulated seconds per real second while the market is open (0: as fast as "
        "possible; 60: one simulated minute a second)",
        min=0,
    ),
]
ReportOpt = Annotated[
    Path, typer.Option("--report", help="Directory for report.json, timeline.png and work files")
]
FastOpt = Annotated[
    bool,
    typer.Option(
        "--fast/--fine",
        help="Simulated steps of 15 s (the same day, sooner) or of 5 s (finer, slower)",
    ),
]
DEFAULT_SEED = 20120801


@app.command(
    "knightmare",
    epilog="Example: knightwatch drill knightmare --seed 7 --speed 0 --report drill-report/",
)
def knightmare(
    seed: SeedOpt = DEFAULT_SEED,
    speed: SpeedOpt = 0.0,
    report: ReportOpt = Path("knightmare-report"),
    fast: FastOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Replay 1 August 2012 on 8 real agents and a control plane, without and with knightwatch.

    A: the manual process (7 of 8 hosts copied by hand, the reused flag on,
    warnings unread, no kill switch, the seven good hosts rolled back).
    B: the same intent through knightwatch. C: a hand edit on node8 after the
    deploy. D: a runaway anyway, stopped by a guard and the kill switch.
    Prints one table row per scenario; writes report.json and timeline.png.
    """
    finished = _drill(_settings(seed, speed, fast), report, json_output=json_output)
    _show(finished, json_output=json_output)


def demo(
    seed: SeedOpt = DEFAULT_SEED,
    speed: SpeedOpt = 300.0,
    report: ReportOpt = Path(".demo"),
    fast: FastOpt = True,
    serve: Annotated[
        bool,
        typer.Option("--serve/--no-serve", help="Keep the control plane running until Ctrl-C"),
    ] = True,
) -> None:
    """The Knightmare drill at demo speed, then the fleet kept up to explore until Ctrl-C.

    Brings up a control plane (SQLite, local blob store) and 8 agents, replays
    1 August 2012 with and without knightwatch, prints the table and where the
    plot and the report are, and keeps the control plane running with its URL
    printed; Ctrl-C stops every process it started.
    """

    def hold(finished: DrillReport, fleet: LocalFleet) -> None:
        _show(finished, json_output=False)
        if serve:
            _serve(fleet)

    _drill(_settings(seed, speed, fast), report, json_output=False, hold=hold)


def _settings(seed: int, speed: float, fast: bool) -> DrillSettings:
    from knightwatch.sim.drill import DrillSettings

    return DrillSettings(seed=seed, speed=speed, fast=fast)


def _drill(
    settings: DrillSettings,
    report: Path,
    *,
    json_output: bool,
    hold: Callable[[DrillReport, LocalFleet], None] | None = None,
) -> DrillReport:
    from knightwatch.sim.drill import run_drill
    from knightwatch.sim.drill.run import STEPS

    previous = signal.signal(signal.SIGTERM, _interrupt)  # a kill stops the fleet, too
    try:
        with _progress(STEPS, quiet=json_output) as say:
            return run_drill(settings, report.resolve(), say, hold)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _progress(total: int, *, quiet: bool) -> Iterator[Callable[[str], None]]:
    """A bar over the drill's steps on a terminal; one timestamped line per step otherwise."""
    started = time.monotonic()
    if quiet:
        yield lambda _text: None
        return
    if not err.is_terminal:
        yield lambda text: err.print(f"[{time.monotonic() - started:6.1f}s] {text}")
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("the Knightmare drill", total=total)

        def say(text: str) -> None:
            progress.console.print(f"[dim]{time.monotonic() - started:6.1f}s[/] {text}")
            progress.update(task, advance=1, description=text[:60])

        yield say


def _show(finished: DrillReport, *, json_output: bool) -> None:
    from knightwatch.sim.drill.report import COLUMNS

    if json_output:
        print_json(finished.to_json())
        return
    table = Table(title=f"Knightmare drill — seed {finished.settings.seed}", box=SIMPLE_HEAD)
    for column in COLUMNS:
        if column == "scenario":
            table.add_column(column, no_wrap=True)
        else:  # two-line headers keep the table within 100 columns
            table.add_column(column.replace(" ", "\n", 1), justify="right", no_wrap=True)
    for row in finished.rows():
        table.add_row(*row)
    out.print(table)
    for line in _findings(finished):
        out.print(f"  • {line}")
    measured = finished.measured()
    if measured["drift_detected_real_s"] is not None:
        out.print(f"  drift on node8 seen in {measured['drift_detected_real_s']:.2f} s (real time)")
    if measured["kill_max_time_to_halt_ms"] is not None:
        out.print(
            f"  kill switch: every node halted within {measured['kill_max_time_to_halt_ms']:.0f} ms"
            " (real time)"
        )
    if "plot" not in finished.files:
        out.print("  plot: not drawn — matplotlib is missing (pip install 'knightwatch[drill]')")
    for name, path in finished.files.items():
        out.print(f"  {name}: {path}")


def _findings(finished: DrillReport) -> list[str]:
    """One line per thing the scenarios proved, from their own facts."""
    a, b, c, d = (finished.outcome(k).facts for k in "ABCD")
    lines = []
    split = a.get("releases_after_manual_deploy") or {}
    lines.append(
        f"A: fleet split {sorted(set(split.values()))} after the manual deploy; "
        f"{finished.outcome('A').warnings} 'Power Peg disabled' warnings went unread"
    )
    if b.get("reuse_refused"):
        lines.append(f"B: 2012.08-reuse refused at push — {b['reuse_refusal']['message']}")
    first = b.get("first_deploy") or {}
    lines.append(
        f"B: deploy with node8 broken {first.get('state')}, "
        f"{len(b.get('switched_by_failed_deploy') or [])} nodes switched; "
        f"then {(b.get('second_deploy') or {}).get('state')}, "
        f"rlp acknowledged by {b.get('rlp_acknowledged_by')} nodes, "
        f"pre-open audit {'clean' if b.get('preopen_audit_ok') else 'NOT clean'}"
    )
    if c.get("flag_refused"):
        lines.append(f"C: rlp refused on the drifted fleet — {c['flag_refusal']['message']}")
    lines.append(f"C: drift alert escalated to level {c.get('alert_escalation_level')}")
    kill = d.get("kill") or {}
    lines.append(
        f"D: guard halted {', '.join(d.get('guard_halted_nodes') or []) or 'no node'}; "
        f"kill switch acknowledged by {kill.get('acknowledged')}/{kill.get('nodes')} nodes"
    )
    return lines


def _serve(fleet: LocalFleet) -> None:
    """Print how to reach the control plane, then wait for Ctrl-C."""
    out.print(f"\n[bold]The control plane is still running at {fleet.url}[/]")
    out.print("Explore it from another terminal:")
    if fleet.ca is not None:
        out.print(f"  export KNIGHTWATCH_CA={fleet.ca}")
    out.print(f"  export KNIGHTWATCH_SERVER={fleet.url}")
    out.print(f"  export KNIGHTWATCH_TOKEN=$(cat {fleet.token_file})")
    out.print("  knightwatch status; knightwatch alerts; knightwatch audit-log")
    out.print(f"or open the dashboard at {fleet.url}/ui/ and sign in with that token.")
    try:  # the prompt inside: a Ctrl-C right after it must land in this handler
        out.print("Press Ctrl-C to stop every process the demo started.")
        threading.Event().wait()
    except KeyboardInterrupt:
        err.print("stopping the demo's fleet and market …")


def register(main: typer.Typer) -> None:
    """Add ``drill`` and ``demo`` to the CLI."""
    main.add_typer(app, name="drill")
    main.command(
        "demo", epilog="Example: knightwatch demo   (or: make demo; --speed 0 --no-serve)"
    )(demo)
