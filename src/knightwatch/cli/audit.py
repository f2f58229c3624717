"""``knightwatch audit | reconcile | release retire``: prove what runs, restore it, retire code."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from knightwatch.cli.operate import follow_deployment
from knightwatch.cli.output import err, out, print_json, shown
from knightwatch.errors import KnightwatchError

if TYPE_CHECKING:
    from knightwatch.client import ApiClient

__all__ = ["audit", "reconcile", "retire"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
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


class RetirementIncompleteError(KnightwatchError):
    """Some node has not verified the retired release's absence."""


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
    from knightwatch.client import ApiClient, resolve_target

    client = ApiClient(resolve_target(), timeout=timeout + 30)
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


def reconcile(
    node: Annotated[str, typer.Option("--node", help="The drifted node to restore")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded)")] = "",
    wait: Annotated[bool, typer.Option("--wait", help="Follow it live until it ends")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Restore a node: re-stage the exact bytes of its release and restart, as a deployment.

    Every process running from the agent's root is stopped, a fresh verified
    tree is swapped in atomically, and the service is restarted and checked;
    the deployment is recorded like any other.
    """
    from knightwatch.client import ApiClient, resolve_target

    client = ApiClient(resolve_target())
    started = client.post(f"/nodes/{quote(node, safe='')}/reconcile", {"reason": reason})
    follow_deployment(client, started, wait=wait, json_output=json_output)


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
    from knightwatch.client import ApiClient, resolve_target

    client = ApiClient(resolve_target())
    report = client.post(f"/releases/{quote(release, safe='')}/retire", {"reason": reason})
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
            state = {"absent": "verified", "pending": "pending", "failed": "failed"}[node["state"]]
            table.add_row(
                shown(node["node"]),
                "[green]verified[/]" if state == "verified" else f"[red]{state}[/]",
                "yes" if node["connected"] else "[red]no[/]",
                shown(node["detail"]),
            )
        out.print(table)
    if not report["complete"]:
        waiting = [n["node"] for n in report["nodes"] if n["state"] != "absent"]
        raise RetirementIncompleteError(
            f"{report['release']}: absence not verified on {', '.join(waiting)}",
            hint="offline nodes get it when they reconnect; run the same command again to check",
        )


def register(app: typer.Typer, release_app: typer.Typer) -> None:
    """Add ``audit``, ``reconcile`` and ``release retire`` to the CLI."""
    app.command("audit", epilog="Example: knightwatch audit --files")(audit)
    app.command("reconcile", epilog="Example: knightwatch reconcile --node node-3 --wait")(
        reconcile
    )
    release_app.command(
        "retire", epilog="Example: knightwatch release retire smars@1.0.0 --reason 'dead code'"
    )(retire)
