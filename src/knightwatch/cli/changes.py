"""``knightwatch change …``: change requests, their approvals, checklists and reviews (P7).

The commands that make a change (``deploy`` …) hand their answer to
:func:`knightwatch.cli.proposals.settle`; these commands act on the request.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from knightwatch.cli.deploy import follow_deployment
from knightwatch.cli.options import (
    EmergencyOpt,
    JsonOpt,
    NodesOpt,
    WaitOpt,
    connect,
    json_scalar,
)
from knightwatch.cli.output import out, paint, print_json, shown
from knightwatch.cli.proposals import settle
from knightwatch.errors import InvalidInputError

__all__ = ["app"]

app = typer.Typer(
    help="Change requests: propose, approve (someone else), tick the checklist, execute.",
    no_args_is_help=True,
)
IdArg = Annotated[int, typer.Argument(help="The change request's id", min=1)]
NoteOpt = Annotated[str, typer.Option("--note", help="Why (recorded)")]
KINDS = ("deploy", "rollback", "reconcile", "retire", "rearm", "flag-set")


@app.command(
    "propose",
    epilog="Example: knightwatch change propose deploy --release smars@2012.8.2 "
    '--reason "RLP launch"',
)
def propose(
    kind: Annotated[
        str, typer.Argument(help="deploy, rollback, reconcile, retire, rearm or flag-set")
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why (required, recorded)")],
    release: Annotated[
        str | None, typer.Option("--release", help="deploy, retire: the release")
    ] = None,
    nodes: NodesOpt = None,
    node: Annotated[str | None, typer.Option("--node", help="reconcile: the node")] = None,
    flag: Annotated[str | None, typer.Option("--flag", help="flag-set: the flag")] = None,
    scope: Annotated[
        str, typer.Option("--scope", help="flag-set: fleet, group:NAME or node:NAME")
    ] = "fleet",
    value: Annotated[
        str | None, typer.Option("--value", help="flag-set: the value (JSON scalar)")
    ] = None,
    emergency: EmergencyOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Propose a change; it runs at once only if nobody else need approve it."""
    if kind not in KINDS:
        raise InvalidInputError(f"{kind!r} is not a kind of change", hint=", ".join(KINDS))
    body: dict[str, Any] = {"kind": kind, "reason": reason, "emergency": emergency}
    for key, given in (("release", release), ("nodes", nodes), ("node", node), ("flag", flag)):
        if given is not None:
            body[key] = given
    if kind == "flag-set":
        body["scope"] = scope
        body["value"] = None if value is None else json_scalar(value)
    client = connect()
    answer = settle(client, client.post("/changes", body), wait=False, json_output=json_output)
    if json_output:
        print_json(answer)
        return
    change = answer["change"]
    out.print(f"[green]✓[/] change [bold]{change['id']}[/] ran at once ({shown(change['kind'])})")


@app.command("list", epilog="Example: knightwatch change list --state PROPOSED")
def list_(
    state: Annotated[
        str | None, typer.Option("--state", help="PROPOSED, APPROVED, EXECUTED …")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="How many, newest first")] = 30,
    json_output: JsonOpt = False,
) -> None:
    """Recent change requests, newest first."""
    query = f"?limit={limit}" + (f"&state={state.upper()}" if state else "")
    changes = connect().get(f"/changes{query}")
    if json_output:
        print_json(changes)
        return
    table = Table("id", "kind", "state", "risk", "author", "approvals", "reason", "created (UTC)")
    for change in changes:
        got = sum(1 for a in change["approvals"] if not a["void"])
        table.add_row(
            str(change["id"]),
            shown(change["kind"]) + (" [red](emergency)[/]" if change["emergency"] else ""),
            paint(change["state"]),
            paint(change["risk"]),
            shown(change["author"]),
            f"{got}/{change['approvals_needed']}",
            shown(change["reason"][:60]),
            change["created_at"][:19],
        )
    out.print(table if changes else "no change requests")


@app.command("show", epilog="Example: knightwatch change show 7")
def show(change_id: IdArg, json_output: JsonOpt = False) -> None:
    """One change request: its target, frozen risk assessment, approvals and checklist."""
    change = connect().get(f"/changes/{change_id}")
    if json_output:
        print_json(change)
        return
    facts = change["assessment"]["facts"]
    out.print(
        f"change [bold]{change['id']}[/] · {shown(change['kind'])} · {paint(change['state'])} · "
        f"risk {paint(change['risk'])} · by {shown(change['author'])}: {shown(change['reason'])}"
    )
    out.print(f"  why this risk: {shown('; '.join(change['assessment']['reasons']))}")
    out.print(f"  nodes: {shown(', '.join(facts['nodes']) or '(none)')}")
    if "release" in facts:
        out.print(f"  release: {shown(facts['release']['release_id'])}")
    if "diff" in facts:
        diff = facts["diff"]
        out.print(
            f"  changes from {shown(facts.get('from_release'))}: {diff['files_changed']} file(s) "
            f"changed, {diff['files_added']} added, {diff['files_removed']} removed; components "
            f"{shown(', '.join(diff['components_changed'] + diff['components_added']) or 'none')}"
            f"; downstream {shown(', '.join(diff['downstream']) or 'none')}"
        )
    for key, label in (
        ("flags_newly_read", "flags newly read"),
        ("flags_no_longer_read", "flags no longer read"),
    ):
        if facts.get(key):
            out.print(f"  {label}: {shown(', '.join(facts[key]))}")
    out.print(
        f"  fleet {paint(facts['fleet_state'])} · {len(facts['open_alerts'])} open alert(s) · "
        f"{len(facts['refusals'])} refusal(s) by the safety policy"
    )
    for approval in change["approvals"]:
        void = " [red](void: the fleet changed)[/]" if approval["void"] else ""
        out.print(f"  approved by {shown(approval['by'])} at {approval['at'][:19]}{void}")
    for item in change["checklist"]:
        mark = f"[green]✓[/] {shown(item['ticked_by'])}" if item["ticked_by"] else "[yellow]☐[/]"
        out.print(f"  {mark} {shown(item['item'])}")
    if change["note"]:
        out.print(f"  note ({shown(change['decided_by'])}): {shown(change['note'])}")
    if change["result"]:
        out.print(f"  result: {shown(change['result'])}")


@app.command("approve", epilog="Example: knightwatch change approve 7")
def approve(change_id: IdArg, json_output: JsonOpt = False) -> None:
    """Approve someone else's change (approver role), for exactly what was assessed."""
    _act(change_id, "approve", {}, json_output)


@app.command("reject", epilog='Example: knightwatch change reject 7 --note "not before the open"')
def reject(change_id: IdArg, note: NoteOpt = "", json_output: JsonOpt = False) -> None:
    """Reject someone else's change (approver role)."""
    _act(change_id, "reject", {"note": note}, json_output)


@app.command("cancel", epilog='Example: knightwatch change cancel 7 --note "superseded by 8"')
def cancel(change_id: IdArg, note: NoteOpt = "", json_output: JsonOpt = False) -> None:
    """Withdraw a change (its author, or an admin)."""
    _act(change_id, "cancel", {"note": note}, json_output)


@app.command("tick", epilog='Example: knightwatch change tick 7 "pre-open audit clean"')
def tick(
    change_id: IdArg,
    item: Annotated[str, typer.Argument(help="The checklist item, as `change show` words it")],
    json_output: JsonOpt = False,
) -> None:
    """Tick one item of a change's checklist, under your name."""
    _act(change_id, "tick", {"item": item}, json_output)


@app.command("execute", epilog="Example: knightwatch change execute 7 --wait")
def execute(change_id: IdArg, wait: WaitOpt = False, json_output: JsonOpt = False) -> None:
    """Run an approved change: the fleet is assessed again first (a change voids approvals)."""
    client = connect()
    result = client.post(f"/changes/{change_id}/execute", {})
    if result["change"]["kind"] in ("deploy", "rollback", "reconcile"):
        follow_deployment(client, result, wait=wait, json_output=json_output)
        return
    if json_output:
        print_json(result)
        return
    out.print(
        f"[green]✓[/] change [bold]{change_id}[/] executed ({shown(result['change']['kind'])})"
    )


@app.command("reviews", epilog="Example: knightwatch change reviews")
def reviews(
    all_: Annotated[bool, typer.Option("--all", help="Closed ones too")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Post-incident review items that emergency changes opened."""
    items = connect().get(f"/reviews?open_only={'false' if all_ else 'true'}")
    if json_output:
        print_json(items)
        return
    table = Table("id", "change", "opened by", "opened (UTC)", "summary", "closed by")
    for item in items:
        table.add_row(
            str(item["id"]),
            str(item["change_id"]),
            shown(item["opened_by"]),
            item["opened_at"][:19],
            shown(item["summary"]),
            shown(item["closed_by"] or ""),
        )
    out.print(table if items else "no open review items")


@app.command(
    "review-close", epilog='Example: knightwatch change review-close 2 --note "root cause: disk"'
)
def review_close(
    review_id: Annotated[int, typer.Argument(help="The review item's id", min=1)],
    note: Annotated[str, typer.Option("--note", help="What the review found (required)")],
    json_output: JsonOpt = False,
) -> None:
    """Close a review item: someone other than whoever acted in the emergency."""
    item = connect().post(f"/reviews/{review_id}/close", {"note": note})
    if json_output:
        print_json(item)
        return
    out.print(f"[green]✓[/] review item [bold]{review_id}[/] closed by {shown(item['closed_by'])}")


def _act(change_id: int, verb: str, body: dict[str, Any], json_output: bool) -> None:
    change = connect().post(f"/changes/{change_id}/{verb}", body)
    if json_output:
        print_json(change)
        return
    got = sum(1 for a in change["approvals"] if not a["void"])
    out.print(
        f"[green]✓[/] change [bold]{change['id']}[/] is {paint(change['state'])} "
        f"({got}/{change['approvals_needed']} approval(s))"
    )
