"""``knightwatch check ACTION``: what the safety policy would refuse now, without acting."""

from __future__ import annotations

from typing import Annotated

import typer

from knightwatch.cli.options import JsonOpt, NodesOpt, connect, json_scalar
from knightwatch.cli.output import out, print_json, print_refusals, shown
from knightwatch.errors import PolicyRefusedError, Refusal

__all__ = ["check", "register"]

EPILOG = (
    "Example: knightwatch check deploy smars@2012.8.1 --nodes 'node*' "
    "(also: check rollback, check reconcile --node node3, check retire RELEASE, "
    "check rearm --nodes node3, check flag-set --flag rlp --value true --scope fleet)"
)


def check(
    action: Annotated[
        str, typer.Argument(help="deploy, rollback, reconcile, retire, rearm or flag-set")
    ],
    release: Annotated[
        str | None,
        typer.Argument(help="Release ID, name@version or digest (deploy, retire)"),
    ] = None,
    nodes: NodesOpt = None,
    node: Annotated[
        str | None, typer.Option("--node", help="The node to reconcile (reconcile)")
    ] = None,
    flag: Annotated[str | None, typer.Option("--flag", help="The flag (flag-set)")] = None,
    value: Annotated[
        str | None, typer.Option("--value", help="The value, as JSON (flag-set)")
    ] = None,
    scope: Annotated[
        str | None, typer.Option("--scope", help="fleet, group:NAME or node:NAME (flag-set)")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Dry run: list every reason the safety policy would refuse ACTION now; change nothing.

    Exit 0 when nothing would refuse it; otherwise print every refusal (the
    check, the reason, the nodes, alerts or releases concerned, and what to
    do) and exit 2, as the refused action itself would. The arguments are
    the action's own: a RELEASE for deploy and retire, --nodes for deploy
    and rearm, --node for reconcile; rollback takes none.
    """
    body = {
        "release": release,
        "nodes": nodes,
        "node": node,
        "flag": flag,
        "scope": scope,
        "value": None if value is None else json_scalar(value),
    }
    answer = connect().post(f"/check/{action}", {k: v for k, v in body.items() if v is not None})
    refusals = [Refusal.from_json(r) for r in answer["refusals"]]
    if json_output:
        print_json(answer)
    elif refusals:
        count = len(refusals)
        out.print(
            f"{shown(answer['action'])} would be refused "
            f"({count} reason{'s' if count != 1 else ''}):"
        )
        print_refusals(refusals, console=out)
    else:
        out.print(f"[green]✓[/] nothing would refuse {shown(answer['action'])} now")
    if refusals:
        raise typer.Exit(PolicyRefusedError.exit_code)


def register(app: typer.Typer) -> None:
    """Add ``check`` to the CLI."""
    app.command("check", epilog=EPILOG)(check)
