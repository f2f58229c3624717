"""``knightwatch deploy | rollback | status | deployments | deployment show``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from knightwatch.cli.output import err, out, print_json, shown
from knightwatch.errors import KnightwatchError

if TYPE_CHECKING:
    from knightwatch.client import ApiClient

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
deployment_app = typer.Typer(help="Inspect one deployment.", no_args_is_help=True)

TERMINAL = {"SUCCEEDED", "FAILED", "ROLLED_BACK", "ROLLBACK_FAILED"}
_COLOURS = {
    "ACTIVE": "green",
    "PREPARED": "cyan",
    "SUCCEEDED": "green",
    "CONVERGED": "green",
    "ROLLED_BACK": "yellow",
    "MIXED": "red",
    "DEGRADED": "yellow",
    "FAILED": "red",
    "PREPARE_FAILED": "red",
    "COMMIT_FAILED": "red",
    "ROLLBACK_FAILED": "red",
    "DEPLOYING": "cyan",
    "DRIFTED": "bold red",
    "drifted": "bold red",
    "clean": "green",
    "unknown": "yellow",
    "running": "green",
    "crash_loop": "red",
    "OFFLINE": "yellow",
    "UNKNOWN": "bold yellow",
    "CONNECTED": "green",
    "PENDING": "yellow",
}


class DeploymentFailedError(KnightwatchError):
    """A waited-for deployment ended in anything but SUCCEEDED."""


def deploy(
    release: Annotated[str, typer.Argument(help="Release ID, name@version or digest (pushed)")],
    nodes: Annotated[
        str | None,
        typer.Option(
            "--nodes", help="Selector: names, globs or group=NAME, comma-separated (default: all)"
        ),
    ] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="atomic or canary")] = "atomic",
    soak: Annotated[float | None, typer.Option("--soak", help="Canary soak seconds")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow it live until it ends")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Deploy RELEASE all-or-nothing: every node verifies it before any node switches."""
    from knightwatch.client import ApiClient, resolve_target

    if strategy not in ("atomic", "canary"):
        raise typer.BadParameter("--strategy must be atomic or canary")
    client = ApiClient(resolve_target())
    started = client.post(
        "/deployments", {"release": release, "nodes": nodes, "strategy": strategy, "soak_s": soak}
    )
    follow_deployment(client, started, wait=wait, json_output=json_output)


def rollback(
    wait: Annotated[bool, typer.Option("--wait", help="Follow it live until it ends")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Return the whole fleet to its previous release, through the same protocol."""
    from knightwatch.client import ApiClient, resolve_target

    client = ApiClient(resolve_target())
    follow_deployment(client, client.post("/rollback"), wait=wait, json_output=json_output)


def status(json_output: JsonOpt = False) -> None:
    """Fleet state (CONVERGED, DRIFTED, MIXED, UNKNOWN, DEPLOYING, DEGRADED) and every node.

    A node whose agent is gone is UNKNOWN: its release, service and pid are shown
    as "last known" with that report's age, never as current.
    """

    from knightwatch.client import ApiClient, resolve_target

    data = ApiClient(resolve_target()).get("/status")
    if json_output:
        print_json(data)
        return
    out.print(
        f"fleet [bold {_colour(data['state'])}]{data['state']}[/]{_condition_age(data)}   "
        f"release {shown(data['desired_release'] or '-')}   previous "
        f"{shown(data['previous_release'] or '-')}"
    )
    for reason in data["reasons"]:
        out.print(f"  • {shown(reason)}")
    table = Table(
        "node",
        "state",
        "active release",
        "digest",
        "drift",
        "service",
        "pid",
        "version",
        "report age",
    )
    for node in data["nodes"]:
        table.add_row(*_node_row(node))
    out.print(table)
    if any(node.get("last_known") for node in data["nodes"]):
        out.print("  (last known): from the node's last report, as old as its report age")


def _condition_age(data: dict[str, Any]) -> str:
    """The age shown after the fleet state, counted from when the condition began."""
    key = {"MIXED": "mixed_for_s", "DRIFTED": "drifted_for_s", "HALTED": "halted_for_s"}
    age = data.get(key.get(data["state"], ""))
    if age is None:
        return " (since: not recorded yet)" if data["state"] == "MIXED" else ""
    return f" for {age:.0f} s"


def _node_row(node: dict[str, Any]) -> list[str]:
    """One table row: current facts, or last-known ones marked so for an UNKNOWN node."""
    age_s = node["last_report_age_s"]
    age = f"{age_s:.1f} s" if age_s is not None else "never"
    drift = _paint(node["drift_state"]) + (
        f" ({node['drift_count']})" if node["drift_state"] == "drifted" else ""
    )
    known = node.get("last_known")
    if known is None:
        facts = [
            shown(node["active_release"] or "-"),
            shown((node["active_digest"] or "-")[:12]),
            _paint(node["service_state"]),
            shown(node["service_pid"] or "-"),
            shown(node["service_version"] or "-"),
        ]
    else:
        possible = node.get("possible_releases") or []
        release = (
            "[red]one of " + ", ".join(shown(p) for p in possible) + "?[/]"
            if possible
            else f"{shown(known['active_release'] or '-')} (last known)"
        )
        facts = [
            release,
            shown((known["active_digest"] or "-")[:12]),
            f"{shown(known['service_state'])} (last known)",
            f"{shown(known['service_pid'] or '-')} (last known)",
            shown(known["service_version"] or "-"),
        ]
    if known is not None:
        drift += " (last known)"
    state = node.get("state", "CONNECTED")
    return [shown(node["name"]), _paint(state), facts[0], facts[1], drift, *facts[2:], age]


def deployments(
    limit: Annotated[int, typer.Option("--limit", help="How many, newest first")] = 20,
    json_output: JsonOpt = False,
) -> None:
    """Recent deployments, newest first."""
    from knightwatch.client import ApiClient, resolve_target

    rows = ApiClient(resolve_target()).get(f"/deployments?limit={limit}")
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
            _paint(row["state"]),
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
    from knightwatch.client import ApiClient, resolve_target

    data = ApiClient(resolve_target()).get(f"/deployments/{deployment_id}")
    if json_output:
        print_json(data)
        return
    out.print(_deployment_table(data))
    events = Table("at", "node", "event", "detail", title="transitions")
    for event in data["events"]:
        events.add_row(
            shown(event["at"][11:23]),
            shown(event["node"] or ""),
            _paint(event["event"]),
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
            while data["state"] not in TERMINAL:
                time.sleep(0.2)
                data = client.get(f"/deployments/{data['id']}")
                live.update(_deployment_table(data))
    if json_output:
        print_json(data)
    elif not err.is_terminal:
        out.print(_deployment_table(data))
    if data["state"] != "SUCCEEDED":
        raise DeploymentFailedError(
            f"deployment {data['id']} ended {data['state']}: "
            f"{data['reason'] or 'no reason recorded'}",
            hint=f"details: knightwatch deployment show {data['id']}",
        )


def _poll(client: ApiClient, data: dict[str, Any]) -> dict[str, Any]:
    seen = data["state"]
    while data["state"] not in TERMINAL:
        time.sleep(0.2)
        data = client.get(f"/deployments/{data['id']}")
        if data["state"] != seen:
            seen = data["state"]
            err.print(f"deployment {shown(data['id'])}: {shown(seen)}")
    return data


def _deployment_table(data: dict[str, Any]) -> Table:
    table = Table(
        "node",
        "role",
        "phase",
        "pid",
        "version",
        "reason",
        title=f"deployment {shown(data['id'])} · {shown(data['kind'])} "
        f"{shown(data['release_id'])} · {shown(data['strategy'])} · {_paint(data['state'])}",
    )
    for node in data.get("nodes", []):
        table.add_row(
            shown(node["node"]),
            shown(node["role"]),
            _paint(node["phase"]),
            shown(node["pid"] or ""),
            shown(node["version"] or ""),
            shown(node["reason"] or ""),
        )
    if data.get("reason"):
        table.caption = shown(data["reason"])
    return table


def paint(word: str) -> str:
    """``word`` in the colour the CLI gives that state."""
    return _paint(word)


def _colour(word: str) -> str:
    return _COLOURS.get(word, "white")


def _paint(word: str) -> str:
    return f"[{_colour(word)}]{shown(word)}[/]"
