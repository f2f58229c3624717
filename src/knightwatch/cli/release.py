"""``knightwatch release push | retire``: releases on the control plane, from upload to deletion."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer
from rich.table import Table

from knightwatch.cli.options import JsonOpt, connect
from knightwatch.cli.output import out, print_json, progress_bar, shown
from knightwatch.cli.proposals import settle
from knightwatch.errors import KnightwatchError
from knightwatch.vocabulary import RetirementState

__all__ = ["RetirementIncompleteError", "app", "register", "release_push", "retire"]

app = typer.Typer(help="Push releases to the control plane.", no_args_is_help=True)
_POLL_S = 0.2


_RETIREMENT_WORDS = {
    RetirementState.ABSENT: "verified",
    RetirementState.PENDING: "pending",
    RetirementState.FAILED: "failed",
}
"""How a node's part in a retirement reads in the table."""


class RetirementIncompleteError(KnightwatchError):
    """Some node has not verified the retired release's absence."""


def release_push(
    release: Annotated[str, typer.Argument(help="Release ID, name@version or digest")],
    store: Annotated[Path, typer.Option("--store", help="Release store directory")],
    json_output: JsonOpt = False,
) -> None:
    """Upload a built release; the server verifies it before it becomes visible."""
    from knightwatch.bundle import ReleaseStore
    from knightwatch.push import push_release

    client = connect(timeout=300.0)
    size = sum(f.size for f in ReleaseStore(store).find(release).manifest.files)
    with progress_bar("uploading", size, enabled=not json_output) as advance:
        pushed = push_release(client, store, release, on_progress=advance)
    result = pushed.to_json()
    if json_output:
        print_json(result)
    elif pushed.already_present:
        out.print(f"[green]✓[/] {shown(pushed.release_id)} is already on the control plane")
    else:
        out.print(
            f"[green]✓[/] pushed [bold]{shown(pushed.release_id)}[/]: {pushed.blobs_sent} blob(s), "
            f"{pushed.bytes_sent:,} bytes; verified by the server"
        )


def retire(
    release: Annotated[str, typer.Argument(help="Release ID, name@version or digest")],
    reason: Annotated[str, typer.Option("--reason", help="Why it is retired (recorded)")] = (
        "retired by an operator"
    ),
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for every node's verification")
    ] = 120.0,
    json_output: JsonOpt = False,
) -> None:
    """Retire RELEASE: every node deletes its tree and verifies and reports its absence.

    Refused while RELEASE is active or a rollback target anywhere. A retired
    release is never deployed again. Exit 1 if any node has not verified the
    absence in time (it gets the command again when it reconnects).
    """
    client = connect()
    answer = client.post(f"/releases/{quote(release, safe='')}/retire", {"reason": reason})
    report = settle(client, answer, wait=False, json_output=json_output)
    path = f"/retirements/{report['retirement_id']}"
    deadline = time.monotonic() + timeout
    while not report["complete"] and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        report = client.get(path)
    if json_output:
        print_json(report)
    else:
        table = Table(
            "node",
            "absence",
            "connected",
            "detail",
            title=f"retirement {shown(report['retirement_id'])} · {shown(report['release'])} · "
            + ("[green]retired[/]" if report["complete"] else "[yellow]incomplete[/]"),
        )
        for node in report["nodes"]:
            state = _RETIREMENT_WORDS[node["state"]]
            table.add_row(
                shown(node["node"]),
                "[green]verified[/]" if state == "verified" else f"[red]{state}[/]",
                "yes" if node["connected"] else "[red]no[/]",
                shown(node["detail"]),
            )
        out.print(table)
    if not report["complete"]:
        waiting = [n["node"] for n in report["nodes"] if n["state"] != RetirementState.ABSENT]
        raise RetirementIncompleteError(
            f"{report['release']}: absence not verified on {', '.join(waiting)}",
            hint="offline nodes get it when they reconnect; run the same command again to check",
        )


def register(main: typer.Typer) -> None:
    """Add the ``release`` commands to the CLI."""
    app.command("push", epilog="Example: knightwatch release push smars@2012.8.1 --store store/")(
        release_push
    )
    app.command(
        "retire", epilog="Example: knightwatch release retire smars@1.0.0 --reason 'dead code'"
    )(retire)
    main.add_typer(app, name="release")
