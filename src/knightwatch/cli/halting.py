"""The work of ``knightwatch kill``, importable without Typer.

In an incident every second counts, and most of a ``knightwatch kill`` used
to be the command starting (Typer, Pydantic, every command module). The
launcher (:mod:`knightwatch.cli.launch`) runs a plain ``kill --reason TEXT
[--nodes SEL] [--timeout SECONDS] [--json]`` straight through
:func:`halt_fleet` with only the HTTP client and the console loaded; any
other form, ``--help`` included, goes through Typer, so what the command
accepts, prints and exits with is the same either way.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from knightwatch.errors import KnightwatchError

__all__ = ["HaltUnacknowledgedError", "KillArguments", "halt_fleet", "kill_arguments"]

_LONG_POLL_S = 30.0
_PLAIN_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_VALUED = ("--reason", "--nodes", "--timeout")


class HaltUnacknowledgedError(KnightwatchError):
    """Some node has not acknowledged the halt: it may still be running."""


@dataclass(frozen=True)
class KillArguments:
    """The options of ``knightwatch kill``, with its defaults."""

    reason: str
    nodes: str | None = None
    timeout: float = 10.0
    json_output: bool = False


def kill_arguments(argv: list[str]) -> KillArguments | None:
    """Parse ``kill …`` when it is a plain, valid use of the command; None for anything else.

    None (leave it to Typer) for another command, ``--help``, an unknown or
    missing option, an option value that starts with ``-`` or is empty, a
    timeout that is not a plain decimal number: everything Typer would
    answer with help or an error, or might read differently.
    """
    options = _options(argv[1:]) if argv[:1] == ["kill"] else None
    if options is None:
        return None
    values, json_output = options
    timeout = values.get("--timeout", "10")
    if "--reason" not in values or not _PLAIN_NUMBER.fullmatch(timeout):
        return None
    return KillArguments(values["--reason"], values.get("--nodes"), float(timeout), json_output)


def _options(args: list[str]) -> tuple[dict[str, str], bool] | None:
    """The valued options (last one wins, as in Typer) and ``--json``; None if any is odd."""
    values: dict[str, str] = {}
    json_output = False
    rest = iter(args)
    for arg in rest:
        if arg == "--json":
            json_output = True
            continue
        name, equals, value = arg.partition("=")
        if not equals:
            value = next(rest, "")
        if name not in _VALUED or not value or (not equals and value.startswith("-")):
            return None
        values[name] = value
    return values, json_output


def halt_fleet(reason: str, nodes: str | None, timeout: float, json_output: bool) -> None:
    """HALT the selected nodes (all: None), wait for their acknowledgements, print the report.

    Raise HaltUnacknowledgedError (exit 1) naming every node that has not
    acknowledged within ``timeout`` seconds.
    """
    from knightwatch.client import ApiClient, resolve_target  # not for parsing argv
    from knightwatch.selection import parse_selector

    if nodes is not None:
        parse_selector(nodes)  # refused here, before any server: --nodes "" is not "all"
    client = ApiClient(resolve_target(), timeout=max(timeout, 10.0) + 30)
    report = client.post("/halts", {"nodes": nodes, "reason": reason})
    path = f"/halts/{report['halt_id']}"
    deadline = time.monotonic() + timeout
    while not report["complete"] and (left := deadline - time.monotonic()) > 0:
        # a long poll: the server answers the moment the last node acknowledges
        report = client.get(f"{path}?wait_s={min(left, _LONG_POLL_S):.3f}")
    from knightwatch.cli.output import print_json  # Rich: loaded once the halt is sent

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


# -- printing -------------------------------------------------------------------------------


def _print_halt(report: dict[str, Any]) -> None:
    from rich.table import Table

    from knightwatch.cli.output import err, out, shown

    acked = len(report["nodes"]) - len(report["unacknowledged"])
    worst = report["max_time_to_halt_ms"]
    title = (
        f"halt {shown(report['halt_id'])} · {shown(report['reason'])} · "
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
            shown(node["node"]),
            ack,
            f"{took:.1f}" if took is not None else "-",
            shown(", ".join(map(str, node["stopped_pids"])) or "-"),
            shown(node["detail"]),
        )
    out.print(table)
    if report["unacknowledged"]:
        out.print(f"[bold red]not acknowledged:[/] {shown(_describe_waiting(report))}")
    elif not err.is_terminal:
        out.print("every node halted; lift it with: knightwatch rearm --reason TEXT")


def _describe_waiting(report: dict[str, Any]) -> str:
    connected = {n["node"]: n["connected"] for n in report["nodes"]}
    return ", ".join(
        f"{name}{'' if connected.get(name) else ' (disconnected)'}"
        for name in report["unacknowledged"]
    )
