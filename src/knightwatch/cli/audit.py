"""``knightwatch audit``: prove what runs on every node, file by file and process by process."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from knightwatch.cli.options import JsonOpt, connect
from knightwatch.cli.output import err, out, print_json, shown
from knightwatch.errors import KnightwatchError

if TYPE_CHECKING:
    from knightwatch.client import ApiClient

__all__ = ["AuditFailedError", "audit", "register"]

_VERDICT_COLOURS = {
    "ok": "green",
    "drift": "bold red",
    "failing": "red",
    "pending": "yellow",
    "unreachable": "red",
}
_POLL_S = 0.2


class AuditFailedError(KnightwatchError):
    """The audit found a difference, or a node did not answer."""


def audit(
    node: Annotated[
        str | None,
        typer.Option("--node", help="Audit only these nodes (names, globs or group=NAME)"),
    ] = None,
    files: Annotated[
        bool, typer.Option("--files", help="List every differing file, expected and actual digest")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for every node's answer")
    ] = 300.0,
    json_output: JsonOpt = False,
) -> None:
    """Audit the fleet now: every node re-hashes its release, checks processes and health.

    Exit 0 only when every node answered and everything matches: no changed,
    missing or extra file, no stale or unmanaged process, every check passing,
    the reported version equal to the active release, no retired component left.
    """
    client = connect(timeout=timeout + 30)
    started = client.post("/audits", {"nodes": node})
    report = _wait(client, f"/audits/{started['audit_id']}", timeout, json_output)
    if json_output:
        print_json(report)
    else:
        _print_audit(report, files=files)
    if not report["ok"]:
        failed = [n["node"] for n in report["nodes"] if n["verdict"] != "ok"]
        raise AuditFailedError(
            f"audit {report['audit_id']}: {len(failed)} of {len(report['nodes'])} node(s) "
            f"do not match: {', '.join(failed)}",
            hint="see the differing files with: knightwatch audit --files; "
            "restore a node with: knightwatch reconcile --node NAME",
        )


def _wait(client: ApiClient, path: str, timeout: float, quiet: bool) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    report: dict[str, Any] = client.get(path)
    told = -1
    while not report["complete"] and time.monotonic() < deadline:
        answered = sum(1 for n in report["nodes"] if n["verdict"] != "pending")
        if answered != told and not quiet:
            count = f"{answered}/{len(report['nodes'])}"
            err.print(f"audit {shown(report['audit_id'])}: {count} answered")
            told = answered
        time.sleep(_POLL_S)
        report = client.get(path)
    return report


def _print_audit(report: dict[str, Any], *, files: bool) -> None:
    table = Table(
        "node",
        "verdict",
        "release",
        "files",
        "MB hashed",
        "seconds",
        "findings",
        "first finding",
        title=f"audit {shown(report['audit_id'])} · "
        + ("[green]everything matches[/]" if report["ok"] else "[bold red]differences[/]"),
    )
    for node in report["nodes"]:
        findings = node["findings"]
        seconds = node["seconds"]
        table.add_row(
            shown(node["node"]),
            f"[{_VERDICT_COLOURS.get(node['verdict'], 'white')}]{shown(node['verdict'])}[/]",
            shown(node["release"] or "-"),
            shown(node["files"]),
            f"{node['bytes_hashed'] / 1e6:.1f}",
            f"{seconds:.2f}" if seconds is not None else "-",
            shown(node["total"]),
            shown(findings[0]["detail"]) if findings else "",
        )
    out.print(table)
    for node in report["nodes"]:
        failing = [c for c in node["checks"] if not c["ok"]]
        for check in failing:
            out.print(
                f"  {shown(node['node'])}: check {shown(check['name'])} failed: "
                f"{shown(check['detail'])}"
            )
    if files:
        _print_files(report)


def _print_files(report: dict[str, Any]) -> None:
    table = Table("node", "severity", "kind", "path / process", "expected", "actual", "detail")
    for node in report["nodes"]:
        for finding in node["findings"]:
            table.add_row(
                shown(node["node"]),
                shown(finding["severity"]),
                shown(finding["kind"]),
                shown(
                    finding.get("path") or (f"pid {finding['pid']}" if finding.get("pid") else "")
                ),
                shown(_short(finding.get("expected"))),
                shown(_short(finding.get("actual"))),
                shown(finding["detail"]),
            )
    out.print(table)


def _short(value: str | None) -> str:
    if value is None:
        return ""
    if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:16] + "…"
    return value


def register(app: typer.Typer) -> None:
    """Add ``audit`` to the CLI."""
    app.command("audit", epilog="Example: knightwatch audit --files")(audit)
