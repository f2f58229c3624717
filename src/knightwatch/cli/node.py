"""``knightwatch node enroll | drain | resume | retire`` and ``knightwatch reconcile``."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from knightwatch.cli.deploy import follow_deployment
from knightwatch.cli.options import EmergencyOpt, JsonOpt, WaitOpt, connect
from knightwatch.cli.output import out, paint, print_json, shown
from knightwatch.cli.proposals import settle

__all__ = [
    "app",
    "node_drain",
    "node_enroll",
    "node_resume",
    "node_retire",
    "reconcile",
    "register",
]

app = typer.Typer(help="Enroll and manage nodes.", no_args_is_help=True)
NodeArg = Annotated[str, typer.Argument(help="Node name")]
ReasonOpt = Annotated[
    str, typer.Option("--reason", help="Why (recorded in the node's history; 1-1000 chars)")
]


def node_enroll(
    name: Annotated[str, typer.Argument(help="Node name (a-z 0-9 . _ -)")],
    ttl: Annotated[float | None, typer.Option("--ttl", help="Token lifetime in seconds")] = None,
    group: Annotated[str, typer.Option("--group", help="Node group")] = "default",
    json_output: JsonOpt = False,
) -> None:
    """Print a one-time join token for NAME (give it to: knightwatch agent --join-file)."""
    grant = connect().post(f"/nodes/{name}/enroll", {"ttl_s": ttl, "group": group})
    if json_output:
        print_json(grant)
        return
    out.print(
        f"join token for [bold]{shown(grant['node'])}[/] "
        f"(one use, expires {shown(grant['expires_at'])}):"
    )
    out.print(shown(grant["token"]), soft_wrap=True)


def node_drain(name: NodeArg, reason: ReasonOpt, json_output: JsonOpt = False) -> None:
    """Stop giving NAME deployments; its agent keeps running and reporting."""
    _change(name, "drain", reason, json_output)


def node_resume(name: NodeArg, reason: ReasonOpt, json_output: JsonOpt = False) -> None:
    """Give drained node NAME deployments again."""
    _change(name, "resume", reason, json_output)


def node_retire(name: NodeArg, reason: ReasonOpt, json_output: JsonOpt = False) -> None:
    """Retire NAME for good: its credential is revoked and its agent disconnected."""
    _change(name, "retire", reason, json_output)


def reconcile(
    node: Annotated[str, typer.Option("--node", help="The drifted node to restore")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded)")] = "",
    emergency: EmergencyOpt = False,
    wait: WaitOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Restore a node: re-stage the exact bytes of its release and restart, as a deployment.

    Every process running from the agent's root is stopped, a fresh verified
    tree is swapped in atomically, and the service is restarted and checked;
    the deployment is recorded like any other.
    """
    client = connect()
    body = {"reason": reason, "emergency": emergency}
    answer = client.post(f"/nodes/{quote(node, safe='')}/reconcile", body)
    started = settle(client, answer, wait=wait, json_output=json_output)
    follow_deployment(client, started, wait=wait, json_output=json_output)


def _change(name: str, action: str, reason: str, json_output: bool) -> None:
    body: dict[str, Any] = {"reason": reason}
    change = connect().post(f"/nodes/{quote(name, safe='')}/{action}", body)
    if json_output:
        print_json(change)
        return
    out.print(
        f"[green]✓[/] node [bold]{shown(change['node'])}[/] is {paint(change['status'])} "
        f"(by {shown(change['actor'])}: {shown(change['reason'])})"
    )


def register(main: typer.Typer) -> None:
    """Add the ``node`` commands and ``reconcile`` to the CLI."""
    for name, command, example in (
        ("enroll", node_enroll, "knightwatch node enroll node1 --ttl 900"),
        ("drain", node_drain, 'knightwatch node drain node3 --reason "disk replacement"'),
        ("resume", node_resume, 'knightwatch node resume node3 --reason "disk replaced"'),
        ("retire", node_retire, 'knightwatch node retire node3 --reason "decommissioned"'),
    ):
        app.command(name, epilog=f"Example: {example}")(command)
    main.add_typer(app, name="node")
    main.command("reconcile", epilog="Example: knightwatch reconcile --node node-3 --wait")(
        reconcile
    )
