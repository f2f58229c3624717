"""``knightwatch swarm``: thousands of hollow agents against one control plane."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Annotated

import typer
from rich.table import Table

from knightwatch.cli.options import JsonOpt
from knightwatch.cli.output import err, out, print_json

__all__ = ["register", "swarm"]


def register(app: typer.Typer) -> None:
    """Add ``knightwatch swarm`` to the CLI."""
    app.command(
        "swarm",
        epilog="Example: knightwatch swarm --count 1000 --prefix rack7 --duration 600 "
        "(the control plane from KNIGHTWATCH_SERVER / KNIGHTWATCH_TOKEN, or the local fleet)",
    )(swarm)


def swarm(
    count: Annotated[int, typer.Option("--count", help="Hollow agents to run", min=1)] = 100,
    prefix: Annotated[
        str, typer.Option("--prefix", help="Node names are PREFIX-00001 …; must be new nodes")
    ] = "hollow",
    group: Annotated[str, typer.Option("--group", help="Group the nodes join")] = "swarm",
    ramp_s: Annotated[
        float | None,
        typer.Option("--ramp", help="Spread the first connects over this many seconds", min=0),
    ] = None,
    duration_s: Annotated[
        float,
        typer.Option(
            "--duration", help="Run this many seconds, then stop (0: until Ctrl-C)", min=0
        ),
    ] = 0.0,
    server: Annotated[
        str | None, typer.Option("--server", help="Control plane URL (else KNIGHTWATCH_SERVER)")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Enroll COUNT hollow agents and keep them connected: the real protocol, no real node.

    Each hollow agent is enrolled like a real node (a join token from the
    operator API, its own Ed25519 key), opens its own WebSocket, sends signed
    heartbeats and acknowledges deploy commands, halts, re-arms and flag
    changes at once; it has no file tree and no service. Use it to measure
    what one control plane carries (bench/scale.py does, at 1,000 and 10,000).
    """
    from knightwatch.client import resolve_target
    from knightwatch.swarm import Swarm, enroll_hollow, hollow_names

    target = resolve_target(server)
    names = hollow_names(prefix, count)
    with _counting("enrolling", count, enabled=not json_output) as enrolled:
        nodes = asyncio.run(enroll_hollow(target, names, group=group, on_enrolled=enrolled))
    hollow = Swarm(target, nodes, ramp_s=ramp_s)
    started = time.monotonic()
    connected: list[int] = []  # how many were connected when the swarm was stopped
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(hollow, duration_s, quiet=json_output, connected=connected))
    counters = hollow.counters
    summary = {
        "agents": count,
        "connected": connected[-1] if connected else 0,
        "sessions": counters.sessions,
        "reports": counters.reports,
        "acks": counters.acks,
        "halts": counters.halts,
        "seconds": round(time.monotonic() - started, 1),
        "last_error": counters.last_error or None,
    }
    if json_output:
        print_json(summary)
        return
    table = Table(title=f"swarm {prefix}: {count} hollow agents", show_header=False)
    for key, value in summary.items():
        table.add_row(key.replace("_", " "), "—" if value is None else str(value))
    out.print(table)


async def _run(hollow: object, duration_s: float, *, quiet: bool, connected: list[int]) -> None:
    from knightwatch.swarm import Swarm

    assert isinstance(hollow, Swarm)
    runner = asyncio.create_task(hollow.run())
    started = time.monotonic()
    try:
        while duration_s == 0 or time.monotonic() - started < duration_s:
            await asyncio.sleep(1.0)
            if runner.done():
                runner.result()
            if not quiet:
                c = hollow.counters
                err.print(
                    f"{c.connected}/{len(hollow.agents)} connected · {c.sessions} sessions · "
                    f"{c.reports} reports · {c.acks} acks · {c.halts} halts",
                    highlight=False,
                )
    finally:
        connected.append(hollow.counters.connected)
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await runner


@contextlib.contextmanager
def _counting(label: str, total: int, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``update(done)`` drawing a bar of ``total`` items on stderr when a TTY."""
    if not enabled or not err.is_terminal:
        yield lambda _done: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), console=err, transient=True
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda done: progress.update(task, completed=done)
