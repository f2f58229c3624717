"""``knightwatch history ITEM`` and ``knightwatch node drain | resume | retire``."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from knightwatch.cli.output import out, print_json, shown

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
NodeArg = Annotated[str, typer.Argument(help="Node name")]
ReasonOpt = Annotated[
    str, typer.Option("--reason", help="Why (recorded in the node's history; 1-1000 chars)")
]
ByOpt = Annotated[
    str | None,
    typer.Option("--by", help="Who is doing this (default: the operator the server knows)"),
]

_COLOURS = {
    "active": "green",
    "enrolled": "cyan",
    "deployed": "cyan",
    "added": "green",
    "changed": "yellow",
    "drained": "yellow",
    "superseded": "dim",
    "retired": "red",
}


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
    from knightwatch.client import ApiClient, resolve_target

    data = ApiClient(resolve_target()).get(f"/history?item={quote(item, safe='')}")
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
            _paint(event["state"]),
            shown(event["actor"]),
            shown(event["reason"]),
            shown(event["detail"]),
        )
    out.print(table)
    if not data["events"]:
        out.print("no recorded transitions yet")


def node_drain(
    name: NodeArg, reason: ReasonOpt, by: ByOpt = None, json_output: JsonOpt = False
) -> None:
    """Stop giving NAME deployments; its agent keeps running and reporting."""
    _change(name, "drain", reason, by, json_output)


def node_resume(
    name: NodeArg, reason: ReasonOpt, by: ByOpt = None, json_output: JsonOpt = False
) -> None:
    """Give drained node NAME deployments again."""
    _change(name, "resume", reason, by, json_output)


def node_retire(
    name: NodeArg, reason: ReasonOpt, by: ByOpt = None, json_output: JsonOpt = False
) -> None:
    """Retire NAME for good: its credential is revoked and its agent disconnected."""
    _change(name, "retire", reason, by, json_output)


def _change(name: str, action: str, reason: str, by: str | None, json_output: bool) -> None:
    from knightwatch.client import ApiClient, resolve_target

    body: dict[str, Any] = {"reason": reason, **({"by": by} if by else {})}
    change = ApiClient(resolve_target()).post(f"/nodes/{quote(name, safe='')}/{action}", body)
    if json_output:
        print_json(change)
        return
    out.print(
        f"[green]✓[/] node [bold]{shown(change['node'])}[/] is {_paint(change['status'])} "
        f"(by {shown(change['actor'])}: {shown(change['reason'])})"
    )


def _paint(word: str) -> str:
    return f"[{_COLOURS.get(word, 'white')}]{shown(word)}[/]"
