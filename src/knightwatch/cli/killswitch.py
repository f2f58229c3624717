"""``knightwatch kill | rearm``: the one button that stops everything, and lifting it."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from knightwatch.cli.options import EmergencyOpt, JsonOpt, NodesOpt, connect
from knightwatch.cli.output import out, print_json, shown
from knightwatch.cli.proposals import settle
from knightwatch.errors import KnightwatchError
from knightwatch.vocabulary import ServiceState

__all__ = ["kill", "rearm", "register"]

ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (required, recorded)")]


class RearmIncompleteError(KnightwatchError):
    """Some node did not start its service again after the re-arm."""


def kill(
    reason: ReasonOpt,
    nodes: NodesOpt = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for every acknowledgement")
    ] = 10.0,
    json_output: JsonOpt = False,
) -> None:
    """HALT the fleet (or the selected nodes) now, latched until a re-arm.

    The halt is recorded, then sent to every agent at once; each runs the
    release's halt hook, signals the service's process group, SIGKILLs it
    after the grace time, refuses to start it again (across restarts) and
    acknowledges. Prints each node's time to halt and names every node that
    has not acknowledged: exit 1 if any has not. Stopping never needs approval.
    """
    from knightwatch.cli.halting import halt_fleet

    halt_fleet(reason, nodes, timeout, json_output)


def rearm(
    reason: ReasonOpt,
    nodes: NodesOpt = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the services to start")
    ] = 60.0,
    emergency: EmergencyOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Lift the halt of the fleet (or the selected nodes): services start again, checked.

    Every halt of the selected nodes is lifted (a kill, a dead man's halt, a
    guard's halt) and each connected node starts its active release's service
    with the usual health checks; a disconnected node is re-armed when it
    reconnects. Exit 1 if a connected node did not start its service in time.
    """
    client = connect(timeout=timeout + 30)
    answer = client.post("/rearm", {"nodes": nodes, "reason": reason, "emergency": emergency})
    plan = settle(client, answer, wait=False, json_output=json_output)
    waiting = set(plan["online"])
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = client.get("/status")
    while _still_halted(status, waiting) and time.monotonic() < deadline:
        time.sleep(0.2)
        status = client.get("/status")
    rows = _rearm_rows(plan, status)
    if json_output:
        print_json({**plan, "nodes": rows})
    else:
        _print_rearm(plan, rows)
    failed = [r["node"] for r in rows if r["connected"] and not r["running"]]
    if failed:
        raise RearmIncompleteError(
            f"re-armed, but the service is not running on {', '.join(failed)}",
            hint="see why: knightwatch status; the service log is ROOT/logs/service.log",
        )


def register(app: typer.Typer) -> None:
    """Add ``kill`` and ``rearm`` to the CLI."""
    app.command("kill", epilog='Example: knightwatch kill --reason "runaway child orders"')(kill)
    app.command(
        "rearm", epilog='Example: knightwatch rearm --nodes node3 --reason "fixed, verified"'
    )(rearm)


# -- printing -------------------------------------------------------------------------------


def _still_halted(status: dict[str, Any], waiting: set[str]) -> bool:
    return any(n["name"] in waiting and not _running(n) for n in status["nodes"])


def _running(node: dict[str, Any]) -> bool:
    """Re-armed and serving (``none``: the active release declares no service)."""
    return not node.get("halted") and node.get("service_state") in (
        ServiceState.RUNNING,
        ServiceState.NONE,
    )


def _rearm_rows(plan: dict[str, Any], status: dict[str, Any]) -> list[dict[str, Any]]:
    by_name = {n["name"]: n for n in status["nodes"]}
    rows = []
    for entry in plan["nodes"]:
        node = by_name.get(entry["node"], {})
        rows.append(
            {
                "node": entry["node"],
                "halt_id": entry["halt_id"],
                "connected": bool(node.get("connected")),
                "halted": bool(node.get("halted")),
                "running": _running(node),
                "service_state": node.get("service_state"),
                "service_pid": node.get("service_pid"),
                "detail": node.get("service_detail") or "",
            }
        )
    return rows


def _print_rearm(plan: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    lifted = shown(", ".join(map(str, plan["lifted"])) or "none active")
    table = Table(
        "node", "connected", "service", "pid", "detail", title=f"re-armed · halts {lifted}"
    )
    for row in rows:
        state = shown(row["service_state"] or "-")
        painted = f"[green]{state}[/]" if row["running"] else f"[yellow]{state}[/]"
        table.add_row(
            shown(row["node"]),
            "yes" if row["connected"] else "[red]no[/] (re-armed when it reconnects)",
            painted,
            shown(row["service_pid"] or "-"),
            shown(row["detail"]),
        )
    out.print(table)
