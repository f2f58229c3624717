"""``knightwatch flags …``: feature flags with a lifecycle, changed only on a consistent fleet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from knightwatch.cli.flagstages import FlagAcksMissingError, plan_stages, run_stages
from knightwatch.cli.options import JsonOpt, connect, json_scalar
from knightwatch.cli.output import err, out, print_json, shown
from knightwatch.cli.proposals import settle
from knightwatch.errors import InvalidInputError

__all__ = ["FlagAcksMissingError", "app"]

app = typer.Typer(
    help="Feature flags: names never reused, meanings fixed, values set only on a consistent "
    "fleet (every node in scope runs one release that declares the flag).",
    no_args_is_help=True,
)
NameArg = Annotated[str, typer.Argument(help="Flag name (see: knightwatch flags list)")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded with the change)")]


def _value_text(value: object) -> str:
    return json.dumps(value)


@app.command("list", epilog="Example: knightwatch flags list")
def list_flags(json_output: JsonOpt = False) -> None:
    """Every flag: kind, type, state, safe default and the values set per scope."""
    data = connect().get("/flags")
    if json_output:
        print_json(data)
        return
    table = Table("name", "kind", "type", "state", "default", "values")
    for flag in data:
        values = ", ".join(f"{v['scope']}={_value_text(v['value'])}" for v in flag["values"])
        table.add_row(
            shown(flag["name"]),
            shown(flag["kind"]),
            shown(flag["type"]),
            "[red]retired[/]" if flag["state"] == "retired" else "active",
            shown(_value_text(flag["default"])),
            shown(values or "(default everywhere)"),
        )
    out.print(table if data else "no flags yet: a release that declares [[flag]] registers them")


@app.command("show", epilog="Example: knightwatch flags show rlp")
def show(name: NameArg, json_output: JsonOpt = False) -> None:
    """One flag: its meaning, lifecycle, values, the releases that declare it, evaluations."""
    data = connect().get(f"/flags/{name}")
    if json_output:
        print_json(data)
        return
    out.print(
        f"[bold]{shown(data['name'])}[/] ({shown(data['kind'])}, {shown(data['type'])}) "
        f"— {shown(data['state'])}"
    )
    out.print(f"  {shown(data['description'])}")
    out.print(
        f"  safe default: {shown(_value_text(data['default']))}; owner: "
        f"{shown(data['owner'] or '-')}; created {shown(data['created_at'])} "
        f"by {shown(data['created_by'])}"
    )
    if data["retired_at"]:
        out.print(
            f"  [red]retired[/] {shown(data['retired_at'])} by {shown(data['retired_by'])}: "
            f"{shown(data['retire_reason'])}"
        )
    for value in data["values"]:
        out.print(
            f"  {shown(value['scope'])} = {shown(_value_text(value['value']))} "
            f"(version {value['version']}, by {shown(value['set_by'])})"
        )
    out.print(f"  declared by {len(data['declared_by'])} release(s)")
    for row in data["evaluations"]:
        out.print(
            f"  evaluated {row['count']} times on {shown(row['node'])} "
            f"(release {shown(row['release'][:12])})"
        )


@app.command(
    "create",
    epilog="Example: knightwatch flags create rlp --kind release "
    "--description 'Retail Liquidity Program routing' --default false",
)
def create(
    name: NameArg,
    kind: Annotated[str, typer.Option("--kind", help="release, ops, kill or experiment")],
    description: Annotated[str, typer.Option("--description", help="What it switches")],
    default: Annotated[str, typer.Option("--default", help="Safe default (JSON: false, 0, 'x')")],
    owner: Annotated[str | None, typer.Option("--owner", help="Who answers for it")] = None,
    lifetime_days: Annotated[
        int | None, typer.Option("--lifetime-days", help="Expected lifetime (default: the kind's)")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Register a flag ahead of the release that reads it (a release's push also registers)."""
    body = {
        "name": name,
        "kind": kind,
        "description": description,
        "default": json_scalar(default),
        "owner": owner,
        "lifetime_days": lifetime_days,
    }
    data = connect().post("/flags", {k: v for k, v in body.items() if v is not None})
    if json_output:
        print_json(data)
        return
    out.print(
        f"[green]✓[/] flag {shown(data['name'])} registered ({shown(data['kind'])}, "
        f"{shown(data['type'])}, safe default {shown(_value_text(data['default']))})"
    )


def _typed(text: str, flag_type: str, name: str) -> object:
    if flag_type == "string":
        return text
    value = json_scalar(text)
    ok = {
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
    }[flag_type]
    if not ok:
        raise InvalidInputError(
            f"{text[:60]!r} is not a {flag_type}, and flag {name} holds {flag_type} values",
            hint={"boolean": "give true or false", "integer": "e.g. 42", "float": "e.g. 0.5"}[
                flag_type
            ],
        )
    return value


@app.command(
    "set", epilog="Example: knightwatch flags set rlp true --scope fleet --reason 'RLP goes live'"
)
def set_value(
    name: NameArg,
    value: Annotated[str | None, typer.Argument(help="The value (omit with --unset)")] = None,
    scope: Annotated[str, typer.Option("--scope", help="fleet, group:NAME or node:NAME")] = "fleet",
    unset: Annotated[
        bool, typer.Option("--unset", help="Remove the scope's value (it follows the wider one)")
    ] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded)")] = "",
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for every node's acknowledgement")
    ] = 10.0,
    stage: Annotated[
        list[str] | None,
        typer.Option(
            "--stage",
            help="Set it here first, confirmed before the next step: N%, group:NAME or "
            "node1+node2 (repeatable, in order; then the whole --scope)",
        ),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Set a flag in a scope — refused, with every reason, unless the scope is consistent.

    Every node in scope must be connected, ACTIVE on one release that declares
    the flag, not drifted or halted, with no deployment running and no
    unacknowledged critical alert. A kill flag may always go to its safe
    side. Then every node writes flags.json and acknowledges; the nodes that
    did not within --wait are listed (chase these) and the command exits 1.
    """
    if (value is None) != unset:
        raise InvalidInputError(
            "give a VALUE, or --unset (not both)", hint="e.g. knightwatch flags set rlp true"
        )
    client = connect(timeout=max(60.0, wait + 30))
    typed = None
    if value is not None:
        flag = client.get(f"/flags/{name}")
        typed = _typed(value, flag["type"], name)

    def apply(where: str, new: object = typed) -> dict[str, Any]:
        answer: dict[str, Any] = client.post(
            f"/flags/{name}/values?wait_s={wait:g}",
            {"scope": where, "value": new, "reason": reason},
        )
        return settle(client, answer, wait=False, json_output=json_output)

    staged: list[str] = []
    if stage:
        if unset:
            raise InvalidInputError("--stage goes with a VALUE, not --unset")
        plan = plan_stages(list(stage), scope, client.get("/status")["nodes"])
        report = err.print if json_output else out.print
        staged = run_stages(plan, apply, report)
    change = apply(scope)
    if not change["missing"]:
        for where in staged:  # the whole scope holds the value now: drop the stages' own
            apply(where, None)
    if json_output:
        print_json(change)
    else:
        _print_change(change)
    if change["missing"]:
        raise FlagAcksMissingError(
            f"{len(change['missing'])} node(s) did not confirm flag {name} "
            f"version {change['version']}: {', '.join(change['missing'])}",
            hint="chase these: knightwatch status; their agents get the value when they reconnect",
        )


def _print_change(change: dict[str, Any]) -> None:
    old = "(unset)" if change["old"] is None else _value_text(change["old"])
    new = "(unset)" if change["new"] is None else _value_text(change["new"])
    out.print(
        f"[green]✓[/] {shown(change['flag'])} {shown(change['scope'])}: {shown(old)} → "
        f"{shown(new)} (version {change['version']}, change {change['id']})"
    )
    total = len(change["targets"])
    out.print(f"  acknowledged by {len(change['acknowledged'])}/{total} node(s)")
    if change["missing"]:
        err.print(f"  [red]not acknowledged (chase these):[/] {', '.join(change['missing'])}")


@app.command(
    "amend",
    epilog="Example: knightwatch flags amend rlp --description 'Retail "
    "Liquidity Program order routing' --reason 'typo'",
)
def amend(
    name: NameArg,
    description: Annotated[str, typer.Option("--description", help="The corrected wording")],
    reason: ReasonOpt,
    json_output: JsonOpt = False,
) -> None:
    """Correct a flag's wording (recorded); a new behaviour needs a new name instead."""
    data = connect().post(f"/flags/{name}/amend", {"description": description, "reason": reason})
    if json_output:
        print_json(data)
        return
    out.print(f"[green]✓[/] flag {shown(name)} amended: {shown(data['description'])}")


@app.command(
    "retire", epilog="Example: knightwatch flags retire power_peg --reason 'code removed in 2003'"
)
def retire(name: NameArg, reason: ReasonOpt, json_output: JsonOpt = False) -> None:
    """Retire a flag for ever: its name is never declared, created or set again."""
    data = connect().post(f"/flags/{name}/retire", {"reason": reason})
    if json_output:
        print_json(data)
        return
    out.print(f"[green]✓[/] flag {shown(name)} retired; the name stays reserved")


@app.command("history", epilog="Example: knightwatch flags history rlp")
def history(
    name: Annotated[str | None, typer.Argument(help="Flag name (default: every flag)")] = None,
    json_output: JsonOpt = False,
) -> None:
    """Every recorded change: who, when, old → new, scope, acknowledgements."""
    data = connect().get(f"/flags/{name}/history" if name else "/flags/history")
    if json_output:
        print_json(data)
        return
    table = Table("id", "at (UTC)", "flag", "what", "scope", "old → new", "by", "acks", "reason")
    for change in data:
        old = "" if change["old"] is None else _value_text(change["old"])
        new = "" if change["new"] is None else _value_text(change["new"])
        acks = (
            f"{len(change['acknowledged'])}/{len(change['targets'])}"
            if change["version"] is not None
            else "-"
        )
        table.add_row(
            shown(change["id"]),
            shown(change["at"][:19]),
            shown(change["flag"]),
            shown(change["kind"]),
            shown(change["scope"] or "-"),
            shown(f"{old} → {new}" if old or new else "-"),
            shown(change["actor"]),
            shown(acks),
            shown(change["reason"]),
        )
    out.print(table if data else "no flag changes recorded")


@app.command("stale", epilog="Example: knightwatch flags stale --days 30")
def stale(
    days: Annotated[
        int, typer.Option("--days", help="Constant everywhere for more than this many days")
    ] = 30,
    json_output: JsonOpt = False,
) -> None:
    """Flags to clean up: past their lifetime, constant, declared by nothing running, unused."""
    data = connect().get(f"/flags/stale?days={days}")
    if json_output:
        print_json(data)
        return
    table = Table("flag", "kind", "owner", "why it is stale")
    for row in data:
        table.add_row(
            shown(row["name"]),
            shown(row["kind"]),
            shown(row["owner"] or "-"),
            shown("; ".join(row["reasons"])),
        )
    out.print(table if data else "no stale flags")


@app.command("scan", epilog="Example: knightwatch flags scan examples/smars")
def scan(
    source: Annotated[Path, typer.Argument(help="Release source tree (with knightwatch.toml)")],
    pattern: Annotated[
        list[str] | None,
        typer.Option("--pattern", help="Extra regex with one group capturing a flag name"),
    ] = None,
    retired: Annotated[
        list[str] | None, typer.Option("--retired", help="A retired flag name (repeatable)")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Find the flags the code reads; errors for undeclared or retired ones, warnings for unread.

    Exit 2 when there is an error (as ``bundle build`` refuses). Retired names
    come from --retired, and from the control plane when KNIGHTWATCH_SERVER is set.
    """
    from knightwatch.cli.flagscan import report_scan

    report_scan(source, list(pattern or []), list(retired or []), json_output=json_output)
