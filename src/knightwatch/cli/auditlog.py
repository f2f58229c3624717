"""``knightwatch audit-log verify|show|export|checkpoint``: the tamper-evident record (P7)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from knightwatch.cli.options import JsonOpt, connect
from knightwatch.cli.output import err, out, print_json, shown
from knightwatch.errors import InvalidInputError, KnightwatchError

__all__ = ["AuditLogBrokenError", "app"]

app = typer.Typer(
    help="The audit log: every state change, hash-chained, with signed checkpoints.",
    no_args_is_help=True,
)
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="Only entries at or after this time (ISO 8601)")
]
PAGE = 1000


class AuditLogBrokenError(KnightwatchError):
    """The audit log's chain or its checkpoints do not hold."""


def _since(text: str | None) -> str:
    if text is None:
        return ""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"--since {text!r} is not an ISO 8601 time", hint="e.g. --since 2012-08-01T09:30Z"
        ) from None
    return "&since=" + quote(moment.isoformat())


def _entries(since: str | None, action: str | None, limit: int | None) -> list[dict[str, Any]]:
    """Every matching entry, page by page."""
    client = connect()
    found: list[dict[str, Any]] = []
    after = 0
    while limit is None or len(found) < limit:
        query = f"?after={after}&limit={PAGE}{_since(since)}"
        if action:
            query += f"&action={quote(action)}"
        page = client.get(f"/audit-log{query}")
        found.extend(page)
        if len(page) < PAGE:
            break
        after = page[-1]["seq"]
    return found if limit is None else found[:limit]


@app.command("verify", epilog="Example: knightwatch audit-log verify")
def verify(json_output: JsonOpt = False) -> None:
    """Recompute the whole chain and check the signed checkpoints; exit 1 naming the first break."""
    report = connect(timeout=600).get("/audit-log/verify")
    if json_output:
        print_json(report)
    else:
        checkpoints = report["checkpoints"]
        if report["ok"]:
            out.print(
                f"[green]✓[/] {report['entries']} entries, chain intact to entry "
                f"{report['head_seq']} ({shown(report['head_hash'][:16])}…); "
                f"{checkpoints['checked']} signed checkpoint(s) agree"
            )
    if not report["ok"]:
        problems = ([report["problem"]] if report["problem"] else []) + report["checkpoints"][
            "problems"
        ]
        raise AuditLogBrokenError(
            "the audit log does not verify: " + "; ".join(problems),
            hint="compare with a backup and the checkpoint file; find out who wrote to the "
            "database directly",
        )


@app.command("show", epilog="Example: knightwatch audit-log show --since 2012-08-01T09:00Z")
def show(
    since: SinceOpt = None,
    action: Annotated[
        str | None, typer.Option("--action", help="Only this action, e.g. flag.set")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many entries")] = 200,
    json_output: JsonOpt = False,
) -> None:
    """Entries in order: sequence, time, actor, action, object, what changed."""
    found = _entries(since, action, limit)
    if json_output:
        print_json(found)
        return
    table = Table("seq", "at (UTC)", "actor", "action", "object")
    table.add_column("payload", overflow="fold")
    for entry in found:
        table.add_row(
            shown(entry["seq"]),
            shown(entry["at"][:19]),
            shown(entry["actor"]),
            shown(entry["action"]),
            shown(entry["object"]),
            shown(json.dumps(entry["payload"], sort_keys=True)[:300]),
        )
    out.print(table if found else "the audit log is empty")


@app.command(
    "export", epilog="Example: knightwatch audit-log export --since 2012-08-01 > log.jsonl"
)
def export(since: SinceOpt = None) -> None:
    """Every entry as JSON Lines on stdout (hashes included, so a copy can be verified)."""
    for entry in _entries(since, None, None):
        print(json.dumps(entry, sort_keys=True))


@app.command("checkpoint", epilog="Example: knightwatch audit-log checkpoint")
def checkpoint(json_output: JsonOpt = False) -> None:
    """Sign the log's head now and append it to the checkpoint file (the server does it on its
    own every minute while the log grows, and when it stops)."""
    written = connect().post("/audit-log/checkpoint", {})
    if json_output:
        print_json(written)
        return
    err.print(
        f"[green]✓[/] checkpoint: entry {written['seq']}, head {shown(written['head'][:16])}…"
    )
