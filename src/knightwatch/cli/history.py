"""``knightwatch history ITEM``: the recorded lifecycle of a release, node, component or flag."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer
from rich.table import Table

from knightwatch.cli.options import JsonOpt, connect
from knightwatch.cli.output import out, paint, print_json, shown

__all__ = ["history", "register"]


def history(
    item: Annotated[
        str,
        typer.Argument(
            help="Release (ID, name@version, digest), node, component (RELEASE/COMPONENT) or "
            "flag; prefix with release:, node:, component: or flag: when ambiguous"
        ),
    ],
    json_output: JsonOpt = False,
) -> None:
    """The recorded lifecycle of a configuration item: what, when, who, why."""
    data = connect().get(f"/history?item={quote(item, safe='')}")
    if json_output:
        print_json(data)
        return
    table = Table(
        "when (UTC)", "state", "who", "why", title=f"{shown(data['kind'])} {shown(data['key'])}"
    )
    table.add_column("detail", overflow="fold")
    for event in data["events"]:
        table.add_row(
            shown(event["at"][:19].replace("T", " ")),
            paint(event["state"]),
            shown(event["actor"]),
            shown(event["reason"]),
            shown(event["detail"]),
        )
    out.print(table)
    if not data["events"]:
        out.print("no recorded transitions yet")


def register(app: typer.Typer) -> None:
    """Add ``history`` to the CLI."""
    app.command("history", epilog="Example: knightwatch history smars@2012.8.1")(history)
