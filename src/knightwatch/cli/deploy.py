"""``knightwatch deploy | rollback | deployments | deployment show``: change the fleet's release."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from knightwatch.cli.options import EmergencyOpt, JsonOpt, NodesOpt, WaitOpt, connect
from knightwatch.cli.output import err, out, paint, print_json, shown
from knightwatch.cli.proposals import settle
from knightwatch.errors import KnightwatchError
from knightwatch.vocabulary import TERMINAL_STATES, DeploymentState, DeploymentStrategy

if TYPE_CHECKING:
    from knightwatch.client import ApiClient

__all__ = [
    "DeploymentFailedError",
    "deploy",
    "deployment_app",
    "deployments",
    "follow_deployment",
    "register",
    "rollback",
]

deployment_app = typer.Typer(help="Inspect one deployment.", no_args_is_help=True)
LONG_POLL_S = 10.0
"""How long one request of a followed deployment waits for its next state (server side)."""


class DeploymentFailedError(KnightwatchError):
    """A waited-for deployment ended in anything but SUCCEEDED."""


def deploy(
    release: Annotated[str, typer.Argument(help="Release ID, name@version or digest (pushed)")],
    nodes: NodesOpt = None,
    strategy: Annotated[str, typer.Option("--strategy", help="atomic or canary")] = "atomic",
    soak: Annotated[float | None, typer.Option("--soak", help="Canary soak seconds")] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (recorded with the change request)")
    ] = None,
    wait: WaitOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Deploy RELEASE all-or-nothing: every node verifies it before any node switches.

    A change request: it runs at once when the approval policy needs nobody
    else; otherwise it is printed and the command exits 3 (with --wait it is
    followed through approval, execution and the deployment).
    """
    if strategy not in tuple(DeploymentStrategy):
        raise typer.BadParameter("--strategy must be atomic or canary")
    client = connect()
    body = {"release": release, "nodes": nodes, "strategy": strategy, "soak_s": soak}
    if reason:
        body["reason"] = reason
    started = settle(client, client.post("/deployments", body), wait=wait, json_output=json_output)
    follow_deployment(client, started, wait=wait, json_output=json_output)


def rollback(
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (recorded with the change request)")
    ] = None,
    emergency: EmergencyOpt = False,
    wait: WaitOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Return the whole fleet to its previous release, through the same protocol.

    A change request like a deploy; --emergency runs it at once on your word
    alone and opens a review item someone else must close.
    """
    client = connect()
    body: dict[str, Any] = {"emergency": emergency, **({"reason": reason} if reason else {})}
    started = settle(client, client.post("/rollback", body), wait=wait, json_output=json_output)
    follow_deployment(client, started, wait=wait, json_output=json_output)


def deployments(
    limit: Annotated[int, typer.Option("--limit", help="How many, newest first")] = 20,
    json_output: JsonOpt = False,
) -> None:
    """Recent deployments, newest first."""
    rows = connect().get(f"/deployments?limit={limit}")
    if json_output:
        print_json(rows)
        return
    table = Table("id", "kind", "release", "strategy", "state", "by", "created", "reason")
    for row in rows:
        table.add_row(
            shown(row["id"]),
            shown(row["kind"]),
            shown(row["release_id"]),
            shown(row["strategy"]),
            paint(row["state"]),
            shown(row["requested_by"]),
            shown(row["created_at"][:19]),
            shown(row["reason"] or ""),
        )
    out.print(table)


@deployment_app.command("show", epilog="Example: knightwatch deployment show 3")
def deployment_show(
    deployment_id: Annotated[int, typer.Argument(help="Deployment id")],
    json_output: JsonOpt = False,
) -> None:
    """One deployment: state, each node's phase and reason, and its recorded transitions."""
    data = connect().get(f"/deployments/{deployment_id}")
    if json_output:
        print_json(data)
        return
    out.print(_deployment_table(data))
    events = Table("at", "node", "event", "detail", title="transitions")
    for event in data["events"]:
        events.add_row(
            shown(event["at"][11:23]),
            shown(event["node"] or ""),
            paint(event["event"]),
            shown(event["detail"]),
        )
    out.print(events)


def follow_deployment(
    client: ApiClient, started: dict[str, Any], *, wait: bool, json_output: bool
) -> None:
    """Print a started deployment, or follow it live until it ends (--wait)."""
    if not wait:
        if json_output:
            print_json(started)
        else:
            out.print(
                f"deployment [bold]{shown(started['id'])}[/] started: "
                f"{shown(started['release_id'])} ({shown(started['state'])}); follow it with: "
                f"knightwatch deployment show {shown(started['id'])}"
            )
        return
    data = started
    if json_output or not err.is_terminal:
        data = _poll(client, data)
    else:
        with Live(_deployment_table(data), console=out, refresh_per_second=10) as live:
            while data["state"] not in TERMINAL_STATES:
                time.sleep(_refresh_s(data))
                data = client.get(f"/deployments/{data['id']}")
                live.update(_deployment_table(data))
    if json_output:
        print_json(data)
    elif not err.is_terminal:
        out.print(_deployment_table(data))
    if data["state"] != DeploymentState.SUCCEEDED:
        raise DeploymentFailedError(
            f"deployment {data['id']} ended {data['state']}: "
            f"{data['reason'] or 'no reason recorded'}",
            hint=f"details: knightwatch deployment show {data['id']}",
        )


def _poll(client: ApiClient, data: dict[str, Any]) -> dict[str, Any]:
    """Follow the deployment's state to its end: the server answers each change (long poll)."""
    seen = data["state"]
    while data["state"] not in TERMINAL_STATES:
        data = client.get(f"/deployments/{data['id']}?wait_s={LONG_POLL_S:g}&state={seen}")
        if data["state"] != seen:
            seen = data["state"]
            err.print(f"deployment {shown(data['id'])}: {shown(seen)}")
    return data


def _refresh_s(data: dict[str, Any]) -> float:
    """How long the live table waits between views: 0.2 s, longer for a large fleet.

    Each view is every node's row; at 5,000 nodes a view every 0.2 s would
    keep the control plane busy drawing it.
    """
    return min(2.0, max(0.2, len(data.get("nodes", [])) / 1000))


def _deployment_table(data: dict[str, Any]) -> Table:
    table = Table(
        "node",
        "role",
        "phase",
        "pid",
        "version",
        "reason",
        title=f"deployment {shown(data['id'])} · {shown(data['kind'])} "
        f"{shown(data['release_id'])} · {shown(data['strategy'])} · {paint(data['state'])}",
    )
    for node in data.get("nodes", []):
        table.add_row(
            shown(node["node"]),
            shown(node["role"]),
            paint(node["phase"]),
            shown(node["pid"] or ""),
            shown(node["version"] or ""),
            shown(node["reason"] or ""),
        )
    if data.get("reason"):
        table.caption = shown(data["reason"])
    return table


def register(app: typer.Typer) -> None:
    """Add ``deploy``, ``rollback``, ``deployments`` and ``deployment show`` to the CLI."""
    app.command(
        "deploy", epilog="Example: knightwatch deploy smars@2012.8.1 --strategy canary --wait"
    )(deploy)
    app.command("rollback", epilog="Example: knightwatch rollback --wait")(rollback)
    app.command("deployments", epilog="Example: knightwatch deployments --limit 5")(deployments)
    app.add_typer(deployment_app, name="deployment")
