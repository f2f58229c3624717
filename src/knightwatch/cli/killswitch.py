"""``knightwatch kill | rearm``: the one button that stops everything, and lifting it."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from knightwatch.cli.output import err, out, print_json
from knightwatch.errors import KnightwatchError

__all__ = ["kill", "rearm", "register"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
NodesOpt = Annotated[
    str | None,
    typer.Option(
        "--nodes", help="Selector: names, globs or group=NAME, comma-separated (default: all)"
    ),
]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (required, recorded)")]
_LONG_POLL_S = 30.0


class HaltUnacknowledgedError(KnightwatchError):
    """Some node has not acknowledged the halt: it may still be running."""


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
    from knightwatch.client import ApiClient, resolve_target

    client = ApiClient(resolve_target(), timeout=max(timeout, 10.0) + 30)
    report = client.post("/halts", {"nodes": nodes, "reason": reason})
    path = f"/halts/{report['halt_id']}"
    deadline = time.monotonic() + timeout
    while not report["complete"] and (left := deadline - time.monotonic()) > 0:
        # a long poll: the server answers the moment the last node acknowledges
        report = client.get(f"{path}?wait_s={min(left, _LONG_POLL_S):.3f}")
    if json_output:
        print_json(report)
    else:
        _print_halt(report)
    if report["unacknowledged"]:
        raise HaltUnacknowledgedError(
            f"halt {report['halt_id']}: not acknowledged by "
            f"{_describe_waiting(report)}: chase these",
            hint="a disconnected node gets the halt the moment it reconnects; an armed node "
            "halts by itself (dead man's switch); check with: knightwatch status",
        )


def rearm(
    reason: ReasonOpt,
    nodes: NodesOpt = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the services to start")
    ] = 60.0,
    json_output: JsonOpt = False,
) -> None:
    """Lift the halt of the fleet (or the selected nodes): services start again, checked.

    Every halt of the selected nodes is lifted (a kill, a dead man's halt, a
    guard's halt) and each connected node starts its active release's service
    with the usual health checks; a disconnected node is re-armed when it
    reconnects. Exit 1 if a connected node did not start its service in time.
    """
    from knightwatch.client import ApiClient, resolve_target

    client = ApiClient(resolve_target(), timeout=timeout + 30)
    plan = client.post("/rearm", {"nodes": nodes, "reason": reason})
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


def _print_halt(report: dict[str, Any]) -> None:
    acked = len(report["nodes"]) - len(report["unacknowledged"])
    worst = report["max_time_to_halt_ms"]
    title = (
        f"halt {report['halt_id']} · {escape(report['reason'])} · "
        f"{acked}/{len(report['nodes'])} acknowledged"
        + (f" · slowest {worst:.0f} ms" if worst is not None else "")
    )
    table = Table(
        "node", "acknowledged", "time to halt (ms)", "pids stopped", "detail", title=title
    )
    for node in report["nodes"]:
        took = node["time_to_halt_ms"]
        if node["acknowledged"]:
            ack = "[green]yes[/]"
        else:
            ack = "[bold red]NO[/]" + ("" if node["connected"] else " (disconnected)")
        table.add_row(
            node["node"],
            ack,
            f"{took:.1f}" if took is not None else "-",
            ", ".join(map(str, node["stopped_pids"])) or "-",
            escape(node["detail"]),
        )
    out.print(table)
    if report["unacknowledged"]:
        out.print(f"[bold red]not acknowledged:[/] {_describe_waiting(report)}")
    elif not err.is_terminal:
        out.print("every node halted; lift it with: knightwatch rearm --reason TEXT")


def _describe_waiting(report: dict[str, Any]) -> str:
    connected = {n["node"]: n["connected"] for n in report["nodes"]}
    return ", ".join(
        f"{name}{'' if connected.get(name) else ' (disconnected)'}"
        for name in report["unacknowledged"]
    )


def _still_halted(status: dict[str, Any], waiting: set[str]) -> bool:
    return any(n["name"] in waiting and not _running(n) for n in status["nodes"])


def _running(node: dict[str, Any]) -> bool:
    """Re-armed and serving (``none``: the active release declares no service)."""
    return not node.get("halted") and node.get("service_state") in ("running", "none")


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
    lifted = ", ".join(map(str, plan["lifted"])) or "none active"
    table = Table(
        "node", "connected", "service", "pid", "detail", title=f"re-armed · halts {lifted}"
    )
    for row in rows:
        state = row["service_state"] or "-"
        shown = f"[green]{state}[/]" if row["running"] else f"[yellow]{state}[/]"
        table.add_row(
            row["node"],
            "yes" if row["connected"] else "[red]no[/] (re-armed when it reconnects)",
            shown,
            str(row["service_pid"] or "-"),
            escape(row["detail"]),
        )
    out.print(table)
