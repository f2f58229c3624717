"""``knightwatch alerts list | show | ack | resolve``: what needs looking at, and who is on it."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from knightwatch.cli.options import JsonOpt, connect
from knightwatch.cli.output import out, print_json, shown
from knightwatch.errors import InvalidInputError
from knightwatch.vocabulary import AlertState, Severity

__all__ = ["app"]

app = typer.Typer(
    help="Alerts: deduplicated, routed, escalated until someone acknowledges them.",
    no_args_is_help=True,
)
IdArg = Annotated[int, typer.Argument(help="Alert ID (see: knightwatch alerts list)")]
CommentOpt = Annotated[
    str, typer.Option("--comment", help="Why, or what you are doing about it (recorded)")
]
_COLOURS: dict[str, str] = {
    AlertState.FIRING: "bold red",
    AlertState.ACKNOWLEDGED: "yellow",
    AlertState.RESOLVED: "green",
    Severity.CRITICAL: "bold red",
    Severity.WARNING: "yellow",
    Severity.INFO: "cyan",
}
_STATES: tuple[str, ...] = tuple(AlertState)


@app.command("list", epilog="Example: knightwatch alerts list --state firing")
def list_alerts(
    state: Annotated[
        str | None, typer.Option("--state", help="Only firing, acknowledged or resolved alerts")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many, newest first")] = 200,
    json_output: JsonOpt = False,
) -> None:
    """Alerts, newest first: state, severity, rule, node, how many times it fired, who acked."""
    if state is not None and state not in _STATES:
        raise InvalidInputError(
            f"--state {state!r} is not one of {', '.join(_STATES)}",
            hint="e.g. knightwatch alerts list --state firing",
        )
    query = f"?limit={limit}" + (f"&state={state}" if state else "")
    data = connect().get(f"/alerts{query}")
    if json_output:
        print_json(data)
        return
    table = Table("id", "state", "severity", "rule", "node", "count", "since (UTC)", "who")
    table.add_column("summary", overflow="fold")
    for alert in data:
        table.add_row(
            shown(alert["id"]),
            _paint(alert["state"]),
            _paint(alert["severity"]),
            shown(alert["rule"]),
            shown(alert["node"] or "fleet"),
            shown(alert["count"]),
            shown(_time(alert["first_at"])),
            shown(alert["resolved_by"] or alert["acknowledged_by"] or "-"),
            shown(alert["summary"]),
        )
    out.print(table if data else "no alerts")


@app.command("show", epilog="Example: knightwatch alerts show 4")
def show(alert_id: IdArg, json_output: JsonOpt = False) -> None:
    """One alert and every notification sent about it (receiver, level, outcome)."""
    data = connect().get(f"/alerts/{alert_id}")
    if json_output:
        print_json(data)
        return
    _headline(data)
    out.print(f"  {shown(data['summary'])}")
    table = Table("sent (UTC)", "status", "level", "receiver", "ok", "detail")
    for sent in data["notifications"]:
        table.add_row(
            shown(_time(sent["at"])),
            _paint(sent["status"]),
            shown(sent["level"]),
            shown(sent["receiver"]),
            "yes" if sent["ok"] else "[red]no[/]",
            shown(sent["detail"]),
        )
    out.print(table if data["notifications"] else "  no notification sent")


@app.command("ack", epilog='Example: knightwatch alerts ack 4 --comment "looking at node2"')
def ack(alert_id: IdArg, comment: CommentOpt = "", json_output: JsonOpt = False) -> None:
    """Acknowledge an alert: someone is on it, so it stops escalating and no longer blocks."""
    _act(alert_id, "ack", {"comment": comment}, json_output)


@app.command("resolve", epilog='Example: knightwatch alerts resolve 4 --comment "fixed"')
def resolve(alert_id: IdArg, comment: CommentOpt = "", json_output: JsonOpt = False) -> None:
    """Resolve an alert by hand; receivers told it fired hear that it is resolved."""
    _act(alert_id, "resolve", {"comment": comment}, json_output)


def _act(alert_id: int, verb: str, body: dict[str, Any], json_output: bool) -> None:
    data = connect().post(f"/alerts/{alert_id}/{verb}", body)
    if json_output:
        print_json(data)
    else:
        _headline(data)


def _headline(alert: dict[str, Any]) -> None:
    who = alert["resolved_by"] or alert["acknowledged_by"]
    out.print(
        f"alert {shown(alert['id'])} {_paint(alert['state'])} {_paint(alert['severity'])} "
        f"{shown(alert['rule'])} on {shown(alert['node'] or 'the fleet')} "
        f"(fired {shown(alert['count'])} times, escalation level "
        f"{shown(alert['escalation_level'])})" + (f" by {shown(who)}" if who else "")
    )


def _paint(word: str) -> str:
    return f"[{_COLOURS.get(word, 'white')}]{shown(word)}[/]"


def _time(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"
